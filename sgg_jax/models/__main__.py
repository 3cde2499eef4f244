"""`python -m sgg_jax.models`: the registered models as a markdown table (docs/models.md's
"Registered models" table is this output; a test keeps the two equal)."""
from __future__ import annotations

import sys

from sgg_jax.models import registry


def model_table(names: tuple[str, ...] | None = None) -> str:
    """One row per model: name, description, parameter groups, loss terms, requirements, the
    stage kinds of its auxiliary networks and its extra evaluations."""
    rows = ["| model | what | parameter groups | losses | needs | extra stage kinds | "
            "extra evaluations |", "|---|---|---|---|---|---|---|"]
    for name in names or registry.model_names():
        spec = registry.get_spec(name)
        cell = lambda items: ", ".join(f"`{x}`" for x in items) or "-"
        rows.append(
            f"| `{spec.name}` | {spec.description} | {cell(spec.param_groups)} | "
            f"{cell(spec.loss_names)} | {cell(spec.requires)} | "
            f"{cell(f'{a.kind} ({a.group})' for a in spec.auxiliary)} | "
            f"{cell(spec.evaluations)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(model_table(tuple(sys.argv[1:]) or None))
