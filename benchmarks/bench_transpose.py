"""The feature-major copy of a sparse layer's input or upstream gradient: (N, F) -> (F, N).

Times NumPy's `ascontiguousarray(x.T)` against sparse_kernels.feature_major (which copies tiles of
TRANSPOSE_TILE_ROWS rows on a CPU where rows span a multiple of 2 KiB), checks both give the same
array, and prints the ratio for the shapes a step meets (the paper MLP's input 128 x 3072, its
upstream gradients) and for widths either side of the rule. `--always-tiled` times the tiled copy
at every width, as the rule was measured.
Usage: python benchmarks/bench_transpose.py [--repeats R]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_layers import median_ms  # noqa: E402  (first: tinyitop sets OpenBLAS's thread timeout)
import numpy as np  # noqa: E402
from bench_options import Parser, repeats  # noqa: E402
from tinyitop import backend as B  # noqa: E402
from tinyitop import sparse_kernels as kernels  # noqa: E402

SHAPES = [(128, 3072), (128, 1024), (128, 512), (128, 256), (128, 2048), (128, 1536), (128, 784), (128, 1000), (128, 10000), (256, 3072), (256, 784), (64, 1024), (32, 1024)]


def parse(argv=None):
    """The options, checked before any timing."""
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=repeats, default=50, help="timed calls per figure (default: %(default)s)")
    parser.add_argument("--always-tiled", action="store_true", help="tile at every width, not only where the rule says")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    if args.always_tiled:
        kernels.TRANSPOSE_ALIASED_STRIDE = 4     # every float32 row is a multiple of 4 bytes
    print(B.describe(), f"| ms per copy, median of {args.repeats} | tiled where a row spans a multiple of "
          f"{kernels.TRANSPOSE_ALIASED_STRIDE} bytes")
    print(f"{'shape (N, F)':>14s} {'row bytes':>9s} {'x.T copy':>9s} {'chosen':>9s} {'speed-up':>9s}")
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        x = B.to_device(rng.standard_normal(shape), dtype="float32")
        plain = lambda: B.xp.ascontiguousarray(x.T)  # noqa: E731
        tiled = lambda: kernels.feature_major(x)  # noqa: E731
        assert bool((plain() == tiled()).all()) and tiled().flags.c_contiguous
        t_plain, t_tiled = median_ms(plain, args.repeats), median_ms(tiled, args.repeats)
        print(f"{str(shape):>14s} {shape[1] * 4:9d} {t_plain:9.3f} {t_tiled:9.3f} {t_plain / t_tiled:9.2f}")


if __name__ == "__main__":
    main()
