"""Docs that are generated from the code stay equal to it."""
from __future__ import annotations

import os

from sgg_jax.models.__main__ import model_table
from sgg_jax.models import registry
from training_utils import REPO


def test_the_model_table_in_docs_is_the_registry_s():
    text = open(os.path.join(REPO, "docs", "models.md"), encoding="utf-8").read()
    table = model_table(tuple(sorted(registry.BUILTIN_MODULES)))
    assert table in text, "docs/models.md: re-paste the output of python -m sgg_jax.models"
