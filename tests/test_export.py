"""`python -m sgg_jax.export`: a run as one jax.export file that runs with JAX alone
(examples/run_exported.py, in an interpreter that cannot import this library) and gives the
library's own scene graphs; given-box exports give the library's PredCls scores."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from training_utils import REPO

# Fails any import of this library's packages in the interpreter it is prepended to.
NO_LIBRARY = r"""
import importlib.abc, sys
class NoLibrary(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("sgg_jax", "data_pipelines", "pallas_kernels"):
            raise ModuleNotFoundError(f"{name} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, NoLibrary())
sys.argv = sys.argv[1:]
exec(compile(open(sys.argv[0]).read(), sys.argv[0], "exec"), {"__name__": "__main__"})
"""


def _images(data, k: int) -> list[str]:
    folder = os.path.join(data.raw_dir, "VG_100K")
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder))[-k:]]


def test_an_sgdet_export_runs_without_the_library_and_matches_it(tiny_sgdet_run, tmp_path):
    import sgg_jax
    from sgg_jax import export

    workdir, data = tiny_sgdet_run
    model = tmp_path / "imp.sggx"
    assert export.main(["--checkpoint", workdir, "--mode", "sgdet", "--output", str(model)]) == 0
    images = _images(data, 3)
    result = tmp_path / "triplets.json"
    run = subprocess.run([sys.executable, "-c", NO_LIBRARY,
                          os.path.join(REPO, "examples", "run_exported.py"), str(model), *images,
                          "--top", "10", "--json", str(result)],
                         cwd=str(tmp_path), capture_output=True, text=True, timeout=600,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(result.read_text())
    g = sgg_jax.load(workdir, {"predict.top_relations": 10})
    for path in images:
        sg = g.predict(path)
        want = [(sg.boxes[s], sg.boxes[o], p, score)
                for (s, o), p, score in zip(sg.rel_pairs, sg.rel_predicates, sg.rel_scores)]
        assert len(got[path]) == len(want) == 10
        for t, (sbox, obox, p, score) in zip(got[path], want):
            assert t["score"] == pytest.approx(score, abs=1e-4)
            assert t["predicate_id"] == p
            np.testing.assert_allclose(t["subject_box"], sbox, atol=0.02)
            np.testing.assert_allclose(t["object_box"], obox, atol=0.02)


def test_a_predcls_export_gives_the_library_s_scores(tiny_sgdet_run, tmp_path):
    from sgg_jax import export, inference
    from sgg_jax.images import load_image

    workdir, data = tiny_sgdet_run
    meta = export.export_run(workdir, "predcls", str(tmp_path / "p.sggx"), batch=2)
    fn, read = export.load_exported(str(tmp_path / "p.sggx"))
    assert read == meta and [i["name"] for i in meta["inputs"]] == [
        "images", "image_sizes", "boxes", "box_mask", "labels"]
    exp, params = inference.restore_for_inference(workdir)
    g = int(exp.config.input.max_objects)
    rng = np.random.default_rng(0)
    loaded = [load_image(p, meta["image_size"]) for p in _images(data, 2)]
    images = np.stack([li.canvas for li in loaded])
    sizes = np.array([li.content_hw for li in loaded], np.int32)
    xy = rng.uniform(0, 40, (2, g, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 20, (2, g, 2))], -1).astype(np.float32)
    mask = np.arange(g)[None] < np.array([[g - 2], [3]])
    labels = rng.integers(1, len(meta["class_names"]), (2, g)).astype(np.int32)
    want = inference.make_given_boxes_fn(exp, params)(images, sizes, boxes, mask, labels)
    got = dict(zip([o["name"] for o in meta["outputs"]],
                   fn.call(images, sizes, boxes, mask, labels)))
    np.testing.assert_array_equal(np.asarray(got["pairs"]), want["rel_pairs"])
    np.testing.assert_array_equal(np.asarray(got["pair_mask"]), want["pair_mask"])
    np.testing.assert_allclose(np.asarray(got["rel_scores"]), want["rel_scores"], atol=1e-6)


def test_onnx_is_refused_in_one_line(tiny_sgdet_run, tmp_path):
    from sgg_jax import export

    code = export.main(["--checkpoint", tiny_sgdet_run[0], "--format", "onnx",
                        "--output", str(tmp_path / "m.onnx")])
    assert code == 2 and not (tmp_path / "m.onnx").exists()
