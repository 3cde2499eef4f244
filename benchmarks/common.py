"""Shared benchmark helpers: median timing of a jitted call, JSON + table output, and the
line-protocol worker process that runs a peer (torch) in another interpreter."""
from __future__ import annotations

import json
import statistics
import subprocess
import time
from typing import Callable, Sequence



def median_seconds(fn: Callable[[], object], *, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of `fn()` (outputs blocked on), after warm-up calls."""
    import jax  # here, so torch-only worker processes can import this module without jax

    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def print_table(rows: Sequence[dict], columns: Sequence[str], title: str = "") -> None:
    """A plain fixed-width table of `columns` from `rows`."""
    if title:
        print(title)
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).rjust(w) for c, w in zip(columns, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def emit_json(obj: dict, path: str | None = None) -> None:
    """Prints the JSON result (and writes it when a path is given)."""
    text = json.dumps(obj, indent=2, sort_keys=True)
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")


class JsonLineWorker:
    """A worker process spoken to in lines: each request is one line on its stdin, each reply
    one JSON object on its stdout. The first reply (the worker's self-description, e.g. its
    library versions) is kept as `info`; `first_line` is sent before reading it, if given."""

    def __init__(self, argv: Sequence[str], name: str, first_line: str | None = None):
        self.name = name
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        if first_line is not None:
            self.send(first_line)
        self.info = self.read()

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}: the worker exited (code {self.proc.wait()})")
        return json.loads(line)

    def seconds(self, request: str) -> float:
        """Sends one request and returns the "seconds" of its reply."""
        self.send(request)
        return self.read()["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()
