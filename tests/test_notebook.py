"""notebooks/quickstart.ipynb runs headless from top to bottom (nbclient, a real Jupyter
kernel) on the tiny FREQ preset: install cell skipped, data generated, trained, evaluated,
pictures drawn, an image file predicted and the run loaded. Any cell error fails the test."""
from __future__ import annotations

import json
import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

from training_utils import REPO

NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")


def test_the_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert any("parameters" in c.metadata.get("tags", []) for c in code)


@pytest.mark.slow
def test_quickstart_runs_headless(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    monkeypatch.setenv("SGG_QUICKSTART_CONFIG", "configs/freq.py:tiny")
    monkeypatch.setenv("SGG_QUICKSTART_WORKDIR", str(workdir))
    monkeypatch.setenv("SGG_QUICKSTART_CACHE", str(tmp_path / "cache"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel starts in an empty directory: nothing may rely on the checkout being the cwd
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    # jax.devices() printed (CpuDevice here; CudaDevice / TpuDevice on an accelerator)
    assert re.search(r"JAX \S+ on \w+ \[\w+Device\(id=0\)", text), text[:2000]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # a data example, an evaluation picture, the predicted graph
    tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    results = json.loads((workdir / "results.json").read_text())
    assert len(tables) == 1 and f"{results['sgcls']['R@50']:.1f}" in tables[0]
    assert {"predcls", "sgcls", "sgdet", "detection"} <= set(results)
    written = sorted(os.listdir(workdir / "predictions_quickstart"))
    assert len(written) == 2 and written[0].endswith(".json") and written[1].endswith(".png")
    graph = json.loads((workdir / "predictions_quickstart" / written[0]).read_text())
    assert graph["image"]["path"].startswith(str(tmp_path / "cache"))
