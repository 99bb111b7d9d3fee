"""Where splitting a pass over channel blocks on two threads pays (threads.SPLIT_MIN_BYTES).

Times ReLU (forward + backward), BatchNorm2d (forward + backward) and im2col + col2im on
channel-major activations of growing size, on one thread and split on two, each call right after a
BLAS product as in a training step, and prints the ratio.
The break-even is the smallest size whose ratio stays below 1. NumPy only (on a GPU nothing is split).
tinyitop sets OPENBLAS_THREAD_TIMEOUT=4 unless it is set; OPENBLAS_THREAD_TIMEOUT=28 (OpenBLAS's
default) shows how BLAS's spinning idle threads take the second core (docs/SPEED.md).
Usage: python benchmarks/bench_threads.py [--repeats 20]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
os.environ.setdefault("TINYITOP_BACKEND", "numpy")
from tinyitop import backend as B, threads  # noqa: E402  (first: it sets OpenBLAS's thread timeout)
import numpy as np  # noqa: E402
from bench_layers import median_ms  # noqa: E402
from bench_options import Parser, repeats  # noqa: E402
from tinyitop.im2col import col2im, im2col  # noqa: E402
from tinyitop.layers import BatchNorm2d, ReLU  # noqa: E402


def passes(channels, batch, side):
    """name -> a zero-argument function doing that pass forward and backward."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((channels, batch, side, side), dtype=np.float32).transpose(1, 0, 2, 3)
    relu, bn = ReLU(), BatchNorm2d(channels)
    return {"ReLU": lambda: relu.backward(relu.forward(x)),
            "BatchNorm2d": lambda: bn.backward(bn.forward(x)),
            "im2col+col2im": lambda: col2im(im2col(x, 3, 3, 1, 1), x.shape, 3, 3, 1, 1)}


def parse(argv=None):
    """The options, checked before any timing."""
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=repeats, default=20, help="timed calls per cell (default: 20)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    B.use("numpy")
    threads.SPLIT_MIN_BYTES = 0                          # split every size; the table shows where it pays
    a, b = np.ones((256, 256), dtype=np.float32), np.ones((256, 8192), dtype=np.float32)
    print(f"OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT', '(unset)')}; "
          "ms per call, one thread / two threads (channel blocks)")
    print(f"{'pass':14s} {'activation':>22s} {'KiB':>8s} {'1 thread':>9s} {'2 threads':>9s} {'2/1':>6s}")
    for channels, batch, side in [(16, 8, 8), (16, 16, 16), (16, 64, 16), (16, 128, 16), (16, 128, 32), (32, 128, 32)]:
        for name, fn in passes(channels, batch, side).items():
            ms = []
            for count in ("1", "2"):
                os.environ["TINYITOP_THREADS"] = count
                ms.append(median_ms(fn, args.repeats, before=lambda: a @ b))   # a product first, as in a step
            kib = channels * batch * side * side * 4 / 1024
            print(f"{name:14s} {f'({batch}, {channels}, {side}, {side})':>22s} {kib:8.0f} {ms[0]:9.3f} {ms[1]:9.3f} "
                  f"{ms[1] / ms[0]:6.2f}", flush=True)


if __name__ == "__main__":
    main()
