"""Docs that are generated from the code stay equal to it, and docs name only flags and config
fields that exist."""
from __future__ import annotations

import os

from sgg_jax.models.__main__ import model_table
from sgg_jax.models import registry
from training_utils import REPO


def test_the_model_table_in_docs_is_the_registry_s():
    text = open(os.path.join(REPO, "docs", "models.md"), encoding="utf-8").read()
    table = model_table(tuple(sorted(registry.BUILTIN_MODULES)))
    assert table in text, "docs/models.md: re-paste the output of python -m sgg_jax.models"


# ----------------------------------------------------------------------------------------------
# docs/distributed.md names only flags and config fields that exist

DISTRIBUTED = os.path.join(REPO, "docs", "distributed.md")
CONFIG_FILES = ("imp", "freq", "msdn", "detector")


def shell_commands(markdown: str) -> list[str]:
    """The shell commands of a page's ```bash blocks, continuation lines joined, comments cut."""
    import re

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def main_arguments(command: str) -> list[str]:
    """The `--name[=value]` arguments given to `python -m sgg_jax.main` in a command line."""
    _, found, rest = command.partition("sgg_jax.main")
    if not found:
        return []
    args = [t.strip("\"'") for t in rest.split()]
    return [a for a in args if a.startswith("--")]


def config_fields(markdown: str) -> set[str]:
    """Every `--config.<field>` the page names, in commands and prose (value cut off)."""
    import re

    return set(re.findall(r"--config\.([A-Za-z_][\w.<>]*[\w>])", markdown))


def config_values(markdown: str) -> list[tuple[str, str]]:
    """(field, value) of every `--config.<field>=<value>` with a literal value (no shell
    variable, no placeholder)."""
    import re

    found = re.findall(r"--config\.([\w.]+)=([^\s`\"']+)", markdown)
    return [(k, v) for k, v in found if not re.search(r"[$<>]|\.\.\.", v)]


def _keys(config) -> set[str]:
    from sgg_jax.training import runs

    return set(runs.flatten(config))


def test_distributed_doc_names_real_flags_and_fields():
    """Every flag given to sgg_jax.main in docs/distributed.md is one of its flags; every
    `--config.<field>` exists in every model config (`<stage>`: a stage of that config); and
    every literal `--config.<field>=<value>` of a command is accepted by the config (type)
    and by the CLI's checks (ranges, choices)."""
    import copy

    from absl import flags

    import sgg_jax
    import sgg_jax.main  # noqa: F401 - defines the flags
    from sgg_jax.training import experiment

    text = open(DISTRIBUTED, encoding="utf-8").read()
    commands = [c for c in shell_commands(text) if "sgg_jax.main" in c]
    assert len(commands) >= 3, "the TPU command, SLURM per GPU and per node"
    arguments = [a for c in commands for a in main_arguments(c)]
    flag_names = {a[2:].split("=", 1)[0] for a in arguments if not a.startswith("--config.")}
    assert flag_names and flag_names <= set(flags.FLAGS), flag_names - set(flags.FLAGS)
    fields = config_fields(text)
    assert {"distributed.initialize", "model.dtype", "input.batch_size"} <= fields
    for name in CONFIG_FILES:
        config = sgg_jax.get_config(f"configs/{name}.py")
        keys = _keys(config)
        for field in fields:
            options = [field.replace("<stage>", s) for s in config.train.stages] \
                if "<stage>" in field else [field]
            assert any(o in keys for o in options), f"{name}: --config.{field}"
    values = config_values(text)
    assert ("model.dtype", "bfloat16") in values
    config = copy.deepcopy(sgg_jax.get_config("configs/imp.py:vg"))
    for key, value in values:
        current = experiment._field(config, key)
        parsed = value if isinstance(current, str) else (
            value == "True" if isinstance(current, bool) else type(current)(value))
        sgg_jax.api.set_field(config, key, parsed)
    experiment.check_ranges(config)
    experiment.check_choices(config)


def test_distributed_doc_checker_catches_a_wrong_field():
    """The extraction sees a misspelt field and a flag that sgg_jax.main does not have."""
    text = ("```bash\nsrun python -m sgg_jax.main --config configs/imp.py \\\n"
            "    --work-dir /x --config.distributed.initialise=True\n```\n")
    (command,) = shell_commands(text)
    assert main_arguments(command) == ["--config", "--work-dir",
                                       "--config.distributed.initialise=True"]
    assert config_fields(text) == {"distributed.initialise"}
    import sgg_jax

    assert "distributed.initialise" not in _keys(sgg_jax.get_config("configs/imp.py"))
