"""The weight-gradient product two ways round: dY X^T against (X dY^T)^T, and which one
tinyitop.layers.weight_gradient picks.

dL/dW = dY (out, M) @ X^T (M, in) sums over M columns (batch x output pixels for a conv). The same
sums can be asked of BLAS as X (in, M) @ dY^T (M, out), then transposed: the same products added in
the same order, so the same bits ("same" column), but BLAS runs one faster than the other. Prints a
table of the conv shapes of VGG-16 / ResNet-18 at width 1/4 and 1 (batch 128) and of the paper's
MLP; ratios are what matter. Runs on either backend (TINYITOP_BACKEND=cupy: timings synchronised).

    python benchmarks/bench_weight_gradient.py [--repeats 10]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from tinyitop import backend as B  # first: it sets OpenBLAS's thread timeout before NumPy loads BLAS
from bench_layers import device_normal, median_ms
from bench_options import Parser, repeats as repeat_count
from tinyitop.layers import weight_gradient

# (what, out, in, M): in = C*KH*KW of a conv, M = 128 images x output pixels
SHAPES = [("VGG/ResNet 1/4, 32x32, 3x3", 16, 144, 131072), ("VGG 1/4 first conv (RGB)", 16, 27, 131072),
          ("VGG/ResNet 1/4, 16x16, 3x3", 32, 288, 32768), ("VGG/ResNet 1/4, 8x8, 3x3", 64, 576, 8192),
          ("VGG/ResNet 1/4, 4x4, 3x3", 128, 1152, 2048), ("ResNet 1/4 1x1 shortcut, 8x8", 64, 32, 8192),
          ("ResNet 1/4 1x1 shortcut, 4x4", 128, 64, 2048), ("width 1, 32x32, 3x3", 64, 576, 131072),
          ("width 1 first conv (RGB)", 64, 27, 131072), ("width 1, 8x8, 3x3", 256, 2304, 8192),
          ("width 1, 4x4, 3x3", 512, 4608, 2048), ("paper MLP fc1, batch 128", 1000, 3072, 128),
          ("MLP 3072 -> 4000, batch 128", 4000, 3072, 128)]


def parse(argv=None):
    """The options, checked before any timing."""
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=repeat_count, default=10, help="timed calls per figure (median)")
    return parser.parse_args(argv)


def main(argv=None):
    repeats = parse(argv).repeats
    print(f"backend: {B.name} | ms per product, median of {repeats} | ratios are what matter\n")
    print(f"{'shape':<32} {'out':>5} {'in':>5} {'M':>7} {'dY X^T':>8} {'(X dY^T)^T':>11} {'ratio':>6}  same  picked")
    for what, n_out, n_in, m in SHAPES:
        dout_t, inputs_t = device_normal((n_out, m)), device_normal((n_in, m))
        plain = median_ms(lambda: dout_t @ inputs_t.T, repeats)
        turned = median_ms(lambda: inputs_t @ dout_t.T, repeats)
        same = bool(B.xp.array_equal(dout_t @ inputs_t.T, (inputs_t @ dout_t.T).T))
        picked = "plain" if weight_gradient(dout_t, inputs_t).flags.c_contiguous else "turned"   # a view if turned
        print(f"{what:<32} {n_out:>5} {n_in:>5} {m:>7} {plain:>8.2f} {turned:>11.2f} {plain / turned:>6.2f}  "
              f"{'yes' if same else 'NO':<4}  {picked}")
    print("\nratio > 1: the turned product is faster. weight_gradient turns it when in > out.")


if __name__ == "__main__":
    main()
