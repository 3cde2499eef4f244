"""`python -m sgg_jax.compare`: models compared on the same data and the same detector, over
seeds, in one table.

    python -m sgg_jax.compare --configs configs/imp.py,configs/msdn.py --seeds 3 \
        --detector runs/detector --workdir runs/compare [--preset default] \
        [--set data.cache_dir=/data/cache --set eval.modes=predcls,sgcls]
        [--set 'sgp-imp:model.base_run=runs/compare/imp/seed{seed}']

Each (config, seed) is one run, `<workdir>/<name>/seed<k>`, trained and evaluated by
`python -m sgg_jax.main` in its own process with `config.seed = k` (the model's initialisation
and training order change; the data, `data.seed`, do not). With `--detector` (a finished
`configs/detector.py` run, or any run's stage directory) every run takes that detector
(`config.model.detector.checkpoint`) instead of training one, so SGDet compares heads on the
same boxes. `--set key=value` is passed to every run as `--config.key=value`;
`--set ENTRY:key=value` to that entry's runs only, and `{seed}` in a value is the run's seed
(SGP on the same seed's base run).

Resumable: a run that finished (its `compare.json` records the exact command) is not redone;
an interrupted one resumes where it stopped (the trainer's own resume). An entry whose run
fails stops alone (its error is kept in the report) and the others go on; the command exits
with 2 when any failed.

Writes into `<workdir>`: `comparison.md` (mean +- sample std over seeds of R@K, ngR@K, mR@K
and zR@K per mode, and the MSDN / F-Net protocol's R@K, with the command that made it),
`comparison.json` (every run's figures and the summary behind the table) and
`per_predicate_<name>.png` (each model's per-predicate R@50 in PredCls, SGCls and SGDet, mean
over seeds, predicates by training frequency).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from sgg_jax.io_utils import write_json_atomic
from sgg_jax.training.charts import bar_chart

MOTIFS_METRICS = ("R@20", "R@50", "R@100", "ngR@50", "mR@50", "mR@100", "zR@50")
MSDN_METRICS = ("R@20", "R@50", "R@100")
MODES = ("predcls", "sgcls", "sgdet", "phrdet")
DONE_FILE = "compare.json"


def entry_names(configs: Sequence[str], preset: str) -> list[str]:
    """A run-directory name per config: its file stem (and preset), made unique."""
    names, seen = [], {}
    for c in configs:
        path, _, own = c.partition(":")
        stem = os.path.splitext(os.path.basename(path))[0]
        p = own or preset
        name = f"{stem}-{p}" if p and p != "default" else stem
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return names


def entry_overrides(overrides: Sequence[str], name: str, names: Sequence[str], seed: int
                    ) -> list[str]:
    """The `--set` overrides of one entry's run: `KEY=VALUE` for every entry, `ENTRY:KEY=VALUE`
    for the entry named ENTRY only; `{seed}` in a value becomes the run's seed (e.g. each seed
    on the same seed's base run)."""
    out = []
    for o in overrides:
        head, eq, value = o.partition("=")
        if not eq:
            raise ValueError(f"--set {o!r}: expected [ENTRY:]KEY=VALUE")
        entry, colon, key = head.rpartition(":")
        if colon and entry not in names:
            raise ValueError(f"--set {o!r}: no entry {entry!r} (entries: {', '.join(names)})")
        if not colon or entry == name:
            out.append(f"{key}={value.replace('{seed}', str(seed))}")
    return out


def run_command(config: str, preset: str, workdir: str, seed: int, detector: str,
                overrides: Sequence[str]) -> list[str]:
    """The `python -m sgg_jax.main` command of one run (`overrides`: this run's KEY=VALUE)."""
    arg = config if ":" in config or not preset else f"{config}:{preset}"
    cmd = [sys.executable, "-m", "sgg_jax.main", "--config", arg, "--workdir", workdir,
           f"--config.seed={seed}"]
    if detector:
        cmd.append(f"--config.model.detector.checkpoint={os.path.abspath(detector)}")
    return cmd + [f"--config.{o}" for o in overrides]


def run_one(cmd: list[str], workdir: str, log_path: str) -> tuple[dict | None, str]:
    """(results.json of the run, "" ) or (None, the error): skips a run whose compare.json
    records the same command (finished before)."""
    done = os.path.join(workdir, DONE_FILE)
    results_path = os.path.join(workdir, "results.json")
    if os.path.isfile(done) and os.path.isfile(results_path):
        with open(done, encoding="utf-8") as f:
            if json.load(f).get("command") == cmd[1:]:
                with open(results_path, encoding="utf-8") as r:
                    return json.load(r), ""
    os.makedirs(workdir, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        with open(log_path, encoding="utf-8") as log:
            lines = [l.strip() for l in log.read().splitlines() if l.strip()]
        errors = [l for l in lines if l.startswith("error:")] or lines[-3:]
        return None, f"exit {proc.returncode}: {' | '.join(errors)[-500:]} (log: {log_path})"
    with open(results_path, encoding="utf-8") as r:
        results = json.load(r)
    write_json_atomic(done, {"command": cmd[1:]})
    return results, ""


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """{"mean", "std" (sample, ddof 1; 0 for one value), "n"} over the finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "n": int(v.size)}


def summarize(runs: dict[str, list[dict]]) -> dict[str, Any]:
    """{name: {"motifs" | "msdn": {mode: {metric: mean_std}}}} over each model's seeds."""
    out: dict[str, Any] = {}
    for name, results in runs.items():
        entry: dict[str, Any] = {"motifs": {}, "msdn": {}}
        for mode in MODES:
            for protocol, metrics in (("motifs", MOTIFS_METRICS), ("msdn", MSDN_METRICS)):
                per_run = [(r.get(mode) if protocol == "motifs" else r.get("msdn", {}).get(mode))
                           for r in results]
                if not any(per_run):
                    continue
                entry[protocol][mode] = {m: mean_std([p.get(m) if p else None for p in per_run])
                                         for m in metrics}
        out[name] = entry
    return out


def _cell(stats: dict | None) -> str:
    if not stats or stats["mean"] is None:
        return "-"
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def markdown(summary: dict[str, Any], command: str, seeds: int, failed: dict[str, str]) -> str:
    """The comparison tables (one per protocol) as markdown."""
    lines = [f"Command: `{command}`", "",
             f"Mean ± sample standard deviation over {seeds} seeds (recalls in %).", ""]
    for protocol, metrics, title in (
            ("motifs", MOTIFS_METRICS, "neural-motifs protocol (per-image mean)"),
            ("msdn", MSDN_METRICS, "MSDN / F-Net protocol (micro-averaged)")):
        rows = [(name, mode, s[protocol][mode]) for name, s in summary.items()
                for mode in MODES if mode in s[protocol]]
        if not rows:
            continue
        lines += [f"**{title}**", "", "| model | mode | " + " | ".join(metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        for name, mode, stats in rows:
            lines.append(f"| {name} | {mode} | "
                         + " | ".join(_cell(stats.get(m)) for m in metrics) + " |")
        lines.append("")
    if failed:
        lines += ["**Failed runs**", ""] + [f"- {k}: {v}" for k, v in failed.items()] + [""]
    return "\n".join(lines)


def per_predicate(results: Sequence[dict], mode: str) -> dict[str, float]:
    """Mean over seeds of each predicate's recall (results[mode]["per_predicate"])."""
    tables = [r[mode]["per_predicate"]["recall"] for r in results
              if mode in r and "per_predicate" in r[mode]]
    if not tables:
        return {}
    return {p: float(np.mean([t[p] for t in tables])) for p in tables[0]}


def predicate_order(results: Sequence[dict], workdir: str) -> list[str]:
    """The predicates of the per-predicate tables, by training frequency (head first; from
    the run's saved statistics when readable)."""
    names: list[str] = []
    for r in results:
        for mode in ("predcls", "sgcls", "sgdet"):
            if not names and "per_predicate" in r.get(mode, {}):
                names = list(r[mode]["per_predicate"]["recall"])
    try:
        from data_pipelines.statistics import DatasetStatistics
        stats = DatasetStatistics.load(os.path.join(workdir, "dataset"))
    except (OSError, ValueError):
        return names
    counts = dict(zip(stats.idx_to_predicate[1:], stats.predicate_counts[1:].tolist()))
    return sorted(names, key=lambda n: -counts.get(n, 0))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sgg_jax.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", required=True, help="comma-separated config files "
                    "(each may carry its own :preset)")
    ap.add_argument("--preset", default="", help="preset for configs that name none")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    ap.add_argument("--detector", default="", help="a finished detector run (or stage "
                    "directory) every run takes its detector from")
    ap.add_argument("--workdir", default="runs/compare")
    ap.add_argument("--set", action="append", default=[], metavar="[ENTRY:]KEY=VALUE",
                    help="a config override for every run, or for one entry's runs (ENTRY as "
                    "named in the report, e.g. sgp-imp); {seed} in VALUE is the run's seed "
                    "(repeatable)")
    args = ap.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not configs or args.seeds < 1:
        print("error: --configs: at least one config file; --seeds >= 1", file=sys.stderr)
        return 2
    if args.detector and not os.path.exists(args.detector):
        print(f"error: --detector {args.detector}: does not exist", file=sys.stderr)
        return 2
    command = "python -m sgg_jax.compare " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    names = entry_names(configs, args.preset)
    try:
        for name in names:
            entry_overrides(args.set, name, names, 0)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runs: dict[str, list[dict]] = {}
    failed: dict[str, str] = {}
    per_run: dict[str, dict] = {}
    for config, name in zip(configs, names):
        for seed in range(args.seeds):
            workdir = os.path.join(args.workdir, name, f"seed{seed}")
            cmd = run_command(config, args.preset, workdir, seed, args.detector,
                              entry_overrides(args.set, name, names, seed))
            print(f"[compare] {name} seed {seed}: {workdir}", file=sys.stderr, flush=True)
            results, error = run_one(cmd, workdir, os.path.join(workdir, "compare.log"))
            if results is None:
                failed[name] = f"seed {seed}: {error}"
                print(f"[compare] {name} failed: {error}", file=sys.stderr, flush=True)
                break
            runs.setdefault(name, []).append(results)
            per_run[f"{name}/seed{seed}"] = {"workdir": workdir, "results": results}
    summary = summarize(runs)
    charts = {}
    for name, results in runs.items():
        series = {mode: per_predicate(results, mode) for mode in ("predcls", "sgcls", "sgdet")}
        series = {m: v for m, v in series.items() if v}
        if series:
            order = predicate_order(results, os.path.join(args.workdir, name, "seed0"))
            charts[name] = bar_chart(series, order, f"{name}: per-predicate R@50, mean over "
                                     f"{len(results)} seeds",
                                     os.path.join(args.workdir, f"per_predicate_{name}.png"))
    report = dict(command=command, seeds=args.seeds, detector=args.detector,
                  configs=dict(zip(names, configs)), summary=summary, runs=per_run,
                  failed=failed, charts=charts)
    os.makedirs(args.workdir, exist_ok=True)
    write_json_atomic(os.path.join(args.workdir, "comparison.json"), report)
    text = markdown(summary, command, args.seeds, failed)
    with open(os.path.join(args.workdir, "comparison.md.tmp"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.replace(os.path.join(args.workdir, "comparison.md.tmp"),
               os.path.join(args.workdir, "comparison.md"))
    print(text)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
