"""Single-layer convolution timing: `sgg_jax.ops.conv` with its fast path ("fast": Winograd for
the stride-1 3x3 layers; for the strided ones a space-to-depth kernel gradient and an im2col
input gradient, forward unchanged) and without it ("xla_fwd": XLA's conv
forward and input gradient, kernel gradient as dots; its forward is
`lax.conv_general_dilated`'s) vs torch (oneDNN), on the 3x3 layers and the 7x7/2 stem of
benchmarks/detector.py's ResNet-50-FPN at 512 px, batch 2, float32. The "fast" column forces
Winograd on every stride-1 layer (the detector uses it only where `_is_winograd` says so).

Each layer is timed forward and forward + backward (output, input gradient and kernel gradient
for a fixed random cotangent). Repetitions interleave (fast, xla_fwd, torch, fast, ...)
so the ratios come from one time window on a shared machine; torch runs in a worker process
(`--torch-python`, e.g. a venv with torch) driven call by call. Prints JSON and a table of
medians (ms) and torch / ours ratios (> 1: we are faster).

  python benchmarks/conv.py [--repeats 5] [--torch-python PATH] [--layers p2,layer1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import JsonLineWorker  # noqa: E402

# name: (batch, H, W, Cin, Cout[, kernel, stride]); every 3x3 stride-1 pad-1 conv shape of the
# R50-FPN at 512 px, its stride-2 3x3s (first block of layer2/3/4; input size given) and stem
LAYERS = {"layer1": (2, 128, 128, 64, 64), "layer2": (2, 64, 64, 128, 128),
          "layer3": (2, 32, 32, 256, 256), "layer4": (2, 16, 16, 512, 512),
          "p2": (2, 128, 128, 256, 256), "p3": (2, 64, 64, 256, 256),
          "p4": (2, 32, 32, 256, 256), "p5": (2, 16, 16, 256, 256), "p6": (2, 8, 8, 256, 256),
          "layer2_s2": (2, 128, 128, 128, 128, 3, 2), "layer3_s2": (2, 64, 64, 256, 256, 3, 2),
          "layer4_s2": (2, 32, 32, 512, 512, 3, 2), "stem": (2, 512, 512, 3, 64, 7, 2)}


def kernel_stride(shape) -> tuple[int, int]:
    return tuple(shape[5:7]) if len(shape) > 5 else (3, 1)


def layer_arrays(shape, seed: int = 0):
    b, h, w, c, d = shape[:5]
    ks, st = kernel_stride(shape)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, h, w, c), dtype=np.float32)
    k = (rng.standard_normal((ks, ks, c, d), dtype=np.float32) / np.sqrt(ks * ks * c)
         ).astype(np.float32)
    ct = rng.standard_normal((b, -(-h // st), -(-w // st), d), dtype=np.float32)
    return x, k, ct


class JaxRunner:
    """One conv implementation on one layer: jitted forward and forward + backward."""

    def __init__(self, conv, shape, fast: bool | None = None):
        import jax
        import jax.numpy as jnp

        import sgg_jax.ops.conv as C

        self.jax = jax
        x, k, ct = (jnp.asarray(a) for a in layer_arrays(shape))
        ks, st = kernel_stride(shape)
        f = lambda x, k: conv(x, k, (st, st), [(ks // 2, ks // 2)] * 2,
                              dimension_numbers=("NHWC", "HWIO", "NHWC"))

        def fwd_bwd(x, k, ct):
            y, vjp = jax.vjp(f, x, k)
            return (y, *vjp(ct))

        saved = C.WINOGRAD_MIN_CHANNELS, C.WINOGRAD_MIN_PIXELS_PER_CHANNEL, C.STRIDED_GRADIENT_DOTS
        if fast is not None:   # traced now, so the choice applies to these programs
            C.WINOGRAD_MIN_CHANNELS, C.WINOGRAD_MIN_PIXELS_PER_CHANNEL = (1, 0) if fast else (
                1 << 30, 0)
            C.STRIDED_GRADIENT_DOTS = fast
        try:
            self._fwd = jax.jit(f).lower(x, k).compile()
            self._fb = jax.jit(fwd_bwd).lower(x, k, ct).compile()
        finally:
            C.WINOGRAD_MIN_CHANNELS, C.WINOGRAD_MIN_PIXELS_PER_CHANNEL, C.STRIDED_GRADIENT_DOTS = saved
        self.args = (x, k, ct)
        self.forward(); self.forward_backward()   # warm-up

    def _time(self, fn, *args) -> float:
        t = time.perf_counter()
        self.jax.block_until_ready(fn(*args))
        return time.perf_counter() - t

    def forward(self) -> float:
        return self._time(self._fwd, *self.args[:2])

    def forward_backward(self) -> float:
        return self._time(self._fb, *self.args)


def _torch_worker() -> None:
    """Answers 'LAYER forward|forward_backward' lines with a wall time (JSON lines)."""
    import torch

    cache = {}

    def tensors(name):
        if name not in cache:
            x, k, ct = layer_arrays(LAYERS[name])
            cache[name] = (torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(),
                           torch.from_numpy(k).permute(3, 2, 0, 1).contiguous(),
                           torch.from_numpy(ct).permute(0, 3, 1, 2).contiguous())
        return cache[name]

    def conv(name, x, k):
        ks, st = kernel_stride(LAYERS[name])
        return torch.nn.functional.conv2d(x, k, stride=st, padding=ks // 2)

    def forward(name, x, k, ct):
        with torch.no_grad():
            conv(name, x, k)

    def forward_backward(name, x, k, ct):
        x = x.detach().requires_grad_(True)
        k = k.detach().requires_grad_(True)
        conv(name, x, k).backward(ct)

    print(json.dumps({"ready": True, "torch": torch.__version__,
                      "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        name, what = line.split()
        fn = {"forward": forward, "forward_backward": forward_backward}[what]
        args = (name, *tensors(name))
        fn(*args)   # warm-up (first call per layer / kind: oneDNN primitive creation)
        t = time.perf_counter()
        fn(*args)
        print(json.dumps({"seconds": time.perf_counter() - t}), flush=True)


class TorchRunner(JsonLineWorker):
    """Drives the `--torch-worker` process; `bind(layer)` selects the layer of the next calls."""

    def __init__(self, python: str):
        super().__init__([python, os.path.abspath(__file__), "--torch-worker"],
                         "benchmarks/conv.py torch worker")

    def bind(self, name: str) -> "TorchRunner":
        self.layer = name
        return self

    def forward(self) -> float:
        return self.seconds(f"{self.layer} forward")

    def forward_backward(self) -> float:
        return self.seconds(f"{self.layer} forward_backward")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers", default=",".join(LAYERS))
    ap.add_argument("--torch-python", default=os.environ.get("TORCH_PYTHON", ""))
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--output", default="")
    args = ap.parse_args()
    if args.torch_worker:
        _torch_worker()
        return

    import jax

    from benchmarks.common import emit_json, print_table
    from sgg_jax.ops.conv import conv_general_dilated

    torch = TorchRunner(args.torch_python) if args.torch_python else None
    load_start = [round(v, 2) for v in os.getloadavg()]
    result = {"repeats": args.repeats, "device": str(jax.devices()[0]),
              "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
              "torch": torch.info if torch else None, "loadavg_start": load_start, "layers": {}}
    rows = []
    for name in args.layers.split(","):
        shape = LAYERS[name]
        runners = {"fast": JaxRunner(conv_general_dilated, shape, fast=True),
                   "xla_fwd": JaxRunner(conv_general_dilated, shape, fast=False)}
        if torch:
            runners["torch"] = torch.bind(name)
        res = {}
        for what in ("forward", "forward_backward"):
            times = {k: [] for k in runners}
            for _ in range(args.repeats):
                for k, r in runners.items():
                    times[k].append(getattr(r, what)())
            res[what] = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        del runners
        b, h, w, c, d = shape[:5]
        ks, st = kernel_stride(shape)
        gflop = 2 * b * -(-h // st) * -(-w // st) * c * d * ks * ks / 1e9
        result["layers"][name] = {"shape_bhwcd": shape, "direct_gflop_forward": gflop, **res}
        for what, r in res.items():
            row = {"layer": name, "shape": f"{ks}x{ks}/{st} {h}x{w} {c}->{d}", "pass": what,
                   **{f"{k} ms": v for k, v in r.items()}}
            if torch:
                row["torch/fast"] = r["torch"] / r["fast"]
                row["torch/xla_fwd"] = r["torch"] / r["xla_fwd"]
            rows.append(row)
    result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    if torch:
        torch.close()
    emit_json(result, args.output or None)
    cols = ["layer", "shape", "pass", "fast ms", "xla_fwd ms"]
    cols += ["torch ms", "torch/fast", "torch/xla_fwd"] if torch else []
    print_table(rows, cols, title=f"convs, batch 2, float32; ms medians of "
                                  f"{args.repeats}; load {load_start} -> {result['loadavg_end']}")


if __name__ == "__main__":
    main()
