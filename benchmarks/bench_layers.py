"""Dense layer speed: tinyitop's forward+backward next to the bare matrix products it must do.

The floor of a Linear layer is its three products (x W^T, dY^T x, dY W); the floor of a Conv2d is
the same three products on the im2col matrix. Prints one table; ratios are what matter. Runs on
either backend (TINYITOP_BACKEND=cupy on a GPU: timings synchronised).
Usage: python benchmarks/bench_layers.py [--repeats 5]
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from tinyitop import backend as B  # first: it sets OpenBLAS's thread timeout before NumPy loads BLAS
import numpy as np  # noqa: E402
from bench_options import Parser, batch_size, repeats
from tinyitop.layers import Conv2d, Linear


def sync():
    """Wait for the GPU, so that a timing covers the kernels a call queued, not only their launch."""
    if B.name == "cupy":
        B.xp.cuda.Device().synchronize()


def median_ms(fn, repeats, before=None):
    """Median ms of fn over `repeats` calls, synchronised; `before` (untimed) runs ahead of each call."""
    fn()  # warm-up (on a GPU: kernel compilation, cached plans)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
            sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def device_normal(shape):
    """float32 N(0, 1) on the active backend's device."""
    return B.to_device(B.rng().standard_normal(shape, dtype="float32"))


def bench_linear(batch, n_in, n_out, repeats):
    layer = Linear(n_in, n_out)
    x = device_normal((batch, n_in))
    dout = device_normal((batch, n_out))
    w = layer.weight.data

    def layer_step():
        layer.forward(x)
        layer.backward(dout)

    def floor():
        x @ w.T
        dout.T @ x
        dout @ w
    return median_ms(layer_step, repeats), median_ms(floor, repeats)


def bench_conv(batch, channels_in, channels_out, size, stride, repeats):
    layer = Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)
    x = device_normal((batch, channels_in, size, size))
    y = layer.forward(x)
    dout = device_normal(y.shape)
    cols = layer.cols.copy()   # the layer rewrites its columns' memory at each step
    w2 = layer.weight.data.reshape(channels_out, -1)
    dout2 = dout.transpose(1, 0, 2, 3).reshape(channels_out, -1).copy()

    def layer_step():
        layer.forward(x)
        layer.backward(dout)

    def floor():
        w2 @ cols
        dout2 @ cols.T
        w2.T @ dout2
    return median_ms(layer_step, repeats), median_ms(floor, repeats)


def parse(argv=None):
    """The options, checked before any timing."""
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=repeats, default=5)
    parser.add_argument("--batch", type=batch_size, default=128)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    print(B.describe())
    print(f"{'layer':44s} {'tinyitop ms':>12s} {'floor ms':>10s} {'ratio':>7s}  goal")
    for n_in, n_out in [(3072, 1024), (1024, 512), (512, 10)]:
        t, f = bench_linear(args.batch, n_in, n_out, args.repeats)
        print(f"{f'Linear {n_in}->{n_out}, batch {args.batch}':44s} {t:12.2f} {f:10.2f} {t / f:7.2f}  <= 1.2")
    for cin, cout, size, stride in [(64, 64, 32, 1), (64, 128, 32, 2), (128, 128, 16, 1), (256, 256, 8, 1),
                                    (512, 512, 4, 1)]:
        t, f = bench_conv(args.batch, cin, cout, size, stride, args.repeats)
        label = f"Conv3x3 {cin}->{cout} @{size}x{size} s{stride}, batch {args.batch}"
        print(f"{label:44s} {t:12.2f} {f:10.2f} {t / f:7.2f}  <= 2.0")


if __name__ == "__main__":
    main()
