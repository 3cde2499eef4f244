"""`python -m data_pipelines.synthetic ...`: generates the synthetic dataset (generator.main)."""
import sys

from data_pipelines.synthetic.generator import main

if __name__ == "__main__":
    sys.exit(main())
