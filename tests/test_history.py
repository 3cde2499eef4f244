"""The evaluation history of a run (<workdir>/eval_history.jsonl and its chart): a re-run
replaces its step's record, the series are the field's headline numbers, the chart draws
each point where its value puts it."""
from __future__ import annotations

from PIL import Image

from sgg_jax.training import charts, reporting


def _det(ap: float) -> dict:
    return {"detection": {"AP": ap, "AP50": ap + 30.0, "AP75": ap - 5.0, "num_images": 9}}


def test_history_records_replace_their_step_and_draw_a_chart(tmp_path):
    workdir = str(tmp_path)
    assert reporting.read_history(workdir) == []
    reporting.append_history(workdir, "detector", 100, _det(10.0))
    reporting.append_history(workdir, "detector", 200, _det(30.0))
    reporting.append_history(workdir, "detector", 200, _det(40.0))  # a re-run of step 200
    records = reporting.read_history(workdir)
    assert [(r["stage"], r["step"]) for r in records] == [("detector", 100), ("detector", 200)]
    series = reporting.history_series(records)
    assert series == {"AP": [(100, 10.0), (200, 40.0)], "AP50": [(100, 40.0), (200, 70.0)],
                      "AP75": [(100, 5.0), (200, 35.0)]}
    im = Image.open(tmp_path / "eval_history.png").convert("RGB")
    # line_chart's frame: x = 50 + 520 * step / 200, y = 36 + 300 * (1 - value / 100)
    for j, (name, pts) in enumerate(series.items()):
        for step, value in pts:
            x, y = 50 + 520 * step / 200, 36 + 300 * (1 - value / 100)
            assert im.getpixel((round(x), round(y))) == charts.COLORS[j], (name, step)


def test_history_series_name_modes_and_stages():
    records = [{"stage": "objects", "step": 5, "results": {"sgcls": {"R@50": 12.5, "R@20": 3}}},
               {"stage": "relations", "step": 7,
                "results": {"predcls": {"R@50": float("nan")}, "sgcls": {"R@50": 20.0}}}]
    assert reporting.history_series(records) == {"objects: sgcls R@50": [(5, 12.5)],
                                                 "relations: sgcls R@50": [(7, 20.0)]}
    assert reporting.history_series(records[1:]) == {"sgcls R@50": [(7, 20.0)]}
