"""col2im on a CPU two ways: the slice loop against the gathers of `_col2im_by_gathers`, and which
one tinyitop.im2col.col2im picks (GATHER_MAX_WIDTH).

The slice loop does one strided `+=` per kernel offset, in rows of the output's width: on small
images most of its time is per-row overhead. The gathers do one `take` and one contiguous `+=` per
offset over every input pixel. Both add the same values in the same order ("same" column). Prints a
table over the 3x3 convs of VGG-16 / ResNet-18 (batch 128) at width 1/4 and 1; ratios are what matter.

    python benchmarks/bench_col2im.py [--repeats 11]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from tinyitop import backend as B  # first: it sets OpenBLAS's thread timeout before NumPy loads BLAS
import numpy as np  # noqa: E402
from bench_layers import median_ms
from bench_options import Parser, batch_size, fail, repeats
from tinyitop import im2col

# (channels, image width = height, stride) of a 3x3 conv's input, padding 1
SHAPES = [(32, 16, 1), (64, 8, 1), (128, 8, 2), (128, 4, 1), (128, 2, 1), (256, 8, 1), (512, 8, 2), (512, 4, 1),
          (512, 2, 1)]


def parse(argv=None):
    """The options, checked before any timing."""
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=repeats, default=11, help="timed calls per figure (median)")
    parser.add_argument("--batch", type=batch_size, default=128)
    args = parser.parse_args(argv)
    if B.name != "numpy":
        fail("bench_col2im.py times the CPU paths: run it with TINYITOP_BACKEND=numpy")
    return args


def main(argv=None):
    args = parse(argv)
    rng = np.random.default_rng(0)
    picked_width = im2col.GATHER_MAX_WIDTH
    print(f"numpy, batch {args.batch}, ms per call, median of {args.repeats} | ratios are what matter\n")
    print(f"{'C':>4} {'H=W':>4} {'stride':>6} {'slices':>8} {'gathers':>8} {'slices/gathers':>15}  same  picked")
    for channels, size, stride in SHAPES:
        x_shape = (args.batch, channels, size, size)
        out = im2col.output_size(size, 3, stride, 1)
        dcols = rng.standard_normal((channels * 9, args.batch * out * out), dtype=np.float32)
        results, times = {}, {}
        for path, width in (("slices", 0), ("gathers", 10 ** 6)):
            im2col.GATHER_MAX_WIDTH = width
            times[path] = median_ms(lambda: im2col.col2im(dcols, x_shape, 3, 3, stride, 1), args.repeats)
            results[path] = np.ascontiguousarray(im2col.col2im(dcols, x_shape, 3, 3, stride, 1)).tobytes()
        im2col.GATHER_MAX_WIDTH = picked_width
        same = "yes" if results["slices"] == results["gathers"] else "NO"
        picked = "gathers" if size <= picked_width else "slices"
        print(f"{channels:>4} {size:>4} {stride:>6} {times['slices']:>8.2f} {times['gathers']:>8.2f} "
              f"{times['slices'] / times['gathers']:>15.2f}  {same:<4}  {picked}")
    print(f"\nslices/gathers > 1: the gathers are faster. col2im takes them for images of width <= {picked_width}.")


if __name__ == "__main__":
    main()
