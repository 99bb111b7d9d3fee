"""Is truly sparse faster? The break-even density of each product, per device.

For layer shapes of the paper's networks, times the three products of a sparse layer on both paths
(tinyitop/sparse_kernels.py) at several densities, synchronised on a GPU:
  forward  W @ X      CSR kernel             vs  values scattered into a dense buffer, then BLAS
  dx       W^T @ dY   CSR kernel (CSR^T)     vs  the same dense buffer, transposed
  dW       gradient at the nonzeros: gather (SDDMM)  vs  dense dY X^T, then take
and prints, per shape, the density below which the sparse path is faster: the constants
PRODUCT_CSR_MAX_DENSITY and GATHER_MAX_DENSITY in tinyitop/sparse_kernels.py come from this table.
On a CPU the CSR product's break-even also depends on whether its dense operand (X, or dY for dx:
max(out, in) x M floats) stays in the last-level cache; `--columns` times one shape at two
densities near the thresholds as M grows, to show where that step falls:
  python benchmarks/bench_breakeven.py [--batch 128] [--plot breakeven.png]
  python benchmarks/bench_breakeven.py --replot saved_output.txt --plot breakeven.png   # e.g. a GPU run's log
  python benchmarks/bench_breakeven.py --columns
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from bench_layers import median_ms  # noqa: E402
from bench_options import Parser, batch_size, fail, repeats, whole_number, writable_file  # noqa: E402  (synchronised on a GPU; the same timing for every benchmark)
from tinyitop import backend as B  # noqa: E402
from tinyitop.sparse import random_sparse_weight  # noqa: E402
from tinyitop.sparse_kernels import (GATHER_MAX_DENSITY, OPERAND_CACHE_BYTES, PRODUCT_CSR_MAX_DENSITY,  # noqa: E402
                                     cache_state, gather_plan, scatter_dense, sddmm, spmm, take)

DENSITIES = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
# (label, out, in, columns per sample): the paper MLP's fc1 and fc2, and ResNet-18's 3x3 convs
# (VGG-16's are the same shapes), whose im2col has one column per output pixel.
SHAPES = [("MLP fc1 1024x3072", 1024, 3072, 1), ("MLP fc2 512x1024", 512, 1024, 1),
          ("conv 64x576 @32x32", 64, 576, 1024), ("conv 128x1152 @16x16", 128, 1152, 256),
          ("conv 256x2304 @8x8", 256, 2304, 64), ("conv 512x4608 @4x4", 512, 4608, 16)]
WIDE = ("wide 10000x10000", 10000, 10000, 1)      # GPU only: its dense twin is 400 MB
# --columns: ResNet-18's layer4.0.conv1 (M 2048 at batch 128) and VGG-16's features.24 (M 3200) have
# this shape at 4.2% and 3.2% density (sparsity 0.95, ERK).
SWEEP_SHAPE, SWEEP_DENSITIES = (512, 2304), (0.032, 0.042)
SWEEP_COLUMNS = (1024, 1536, 2048, 2560, 3200, 4096, 6144, 8192)


def operand(n_out, n_in, columns):
    """(MiB of the CSR product's float32 dense operand, "in cache" or "beyond cache"), as choose_paths sees it."""
    return max(n_out, n_in) * columns * 4 / 2 ** 20, cache_state((n_out, n_in), columns, 4)


def time_products(n_out, n_in, columns, density, repeats):
    """ms of each product on each path for one (out, in) layer at `density` and `columns` columns."""
    rng = np.random.default_rng(0)
    weight = random_sparse_weight((n_out, n_in), density, n_in)
    x_t = B.to_device(rng.standard_normal((n_in, columns)), dtype="float32")      # (in, M) feature-major
    dy_t = B.to_device(rng.standard_normal((n_out, columns)), dtype="float32")    # (out, M)
    csr = weight.csr
    scatter_dense(weight)                                                           # the zeroing, once
    order, rows, cols = gather_plan(weight)
    return {
        "fwd csr": median_ms(lambda: spmm(csr, x_t), repeats),
        "fwd dense": median_ms(lambda: scatter_dense(weight) @ x_t, repeats),       # scatter + product
        "dx csr": median_ms(lambda: spmm(csr.T, dy_t), repeats),
        "dx dense": median_ms(lambda: scatter_dense(weight).T @ dy_t, repeats),
        "dW gather": median_ms(lambda: sddmm(dy_t, x_t, rows, cols, order), repeats),
        "dW dense+take": median_ms(lambda: take(weight, dy_t @ x_t.T), repeats),
    }


def crossover(densities, sparse_ms, dense_ms):
    """Highest measured density at which the sparse path is still faster (0 if never)."""
    wins = [d for d, s, t in zip(densities, sparse_ms, dense_ms) if s < t]
    return max(wins) if wins else 0.0


def parse(argv=None):
    """The options, every one checked before any timing (a saved table read back for --replot)."""
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=batch_size, default=128)
    parser.add_argument("--repeats", type=repeats, default=5)
    parser.add_argument("--plot", default=None, help="write the time-vs-density figure here (PNG)")
    parser.add_argument("--shapes", type=whole_number(1, len(SHAPES)), default=None,
                        help="only the first N shapes (a quick look)")
    parser.add_argument("--replot", default=None, help="draw --plot from this benchmark's saved output instead")
    parser.add_argument("--columns", action="store_true",
                        help="one shape at two densities as the column count M grows (the CPU's cache step)")
    args = parser.parse_args(argv)
    args.table = None
    if args.plot or args.replot:
        args.plot = args.plot or "breakeven.png"
        if not os.path.splitext(args.plot)[1]:
            args.plot += ".png"                        # what matplotlib writes for a name without one
        writable_file(args.plot, "--plot")
    if args.replot:
        if not os.path.isfile(args.replot):
            fail(f"--replot {args.replot} is not a file (give a saved output of this benchmark)")
        try:
            args.table = read_table(args.replot)
        except (ValueError, IndexError, KeyError, UnicodeDecodeError):
            pass
        if not args.table or not args.table[1]:
            fail(f"--replot {args.replot} holds no table of this benchmark (save its output with > FILE)")
    return args


def main(argv=None):
    args = parse(argv)
    if args.columns:
        return column_sweep(args.repeats)
    if args.replot:
        title, results = args.table
        backend = "cupy" if title.startswith("backend: cupy") else "numpy"
        return plot(results, args.plot, title, backend)
    print(B.describe(), f"| batch {args.batch} | float32 | ms, median of {args.repeats}")
    shapes = SHAPES[:args.shapes] + ([WIDE] if B.name == "cupy" and args.shapes is None else [])
    results = {}
    for label, n_out, n_in, per_sample in shapes:
        columns = per_sample * args.batch
        mib, cache = operand(n_out, n_in, columns)
        print(f"\n{label}, M = {columns} columns, dense operand {mib:.1f} MiB ({cache})")
        print(f"{'density':>8s} " + " ".join(f"{k:>13s}" for k in ("fwd csr", "fwd dense", "dx csr", "dx dense",
                                                                      "dW gather", "dW dense+take")))
        rows = []
        for density in DENSITIES:
            ms = time_products(n_out, n_in, columns, density, args.repeats)
            rows.append(ms)
            print(f"{density:8.3f} " + " ".join(f"{v:13.3f}" for v in ms.values()), flush=True)
        results[label] = rows
    print(f"\nBreak-even: highest density (of {', '.join(map(str, DENSITIES))}) where the sparse path still wins")
    print(f"{'shape':24s} {'forward':>8s} {'dx':>8s} {'dW':>8s}")
    for label, rows in results.items():
        cut = [crossover(DENSITIES, [r[a] for r in rows], [r[b] for r in rows])
               for a, b in (("fwd csr", "fwd dense"), ("dx csr", "dx dense"), ("dW gather", "dW dense+take"))]
        print(f"{label:24s} " + " ".join(f"{c:8.3f}" for c in cut))
    print(thresholds_line())
    if args.plot:
        plot(results, args.plot, short_title(B.describe()), B.name)


def thresholds_line():
    products = PRODUCT_CSR_MAX_DENSITY[B.name]
    return (f"tinyitop's thresholds on {B.name}: CSR products below {products['in cache']} while the dense "
            f"operand fits {OPERAND_CACHE_BYTES / 2 ** 20:.0f} MiB, below {products['beyond cache']} beyond; "
            f"gather below {GATHER_MAX_DENSITY[B.name]} (tinyitop/sparse_kernels.py)")


def column_sweep(repeats):
    """CSR vs dense (forward + dx) at one shape and two densities, M from small to large."""
    n_out, n_in = SWEEP_SHAPE
    print(B.describe(), f"| {n_out}x{n_in} | float32 | ms, median of {repeats}")
    print(f"{'density':>8s} {'M':>6s} {'operand MiB':>12s} {'csr fwd+dx':>11s} {'dense fwd+dx':>13s} "
          f"{'csr/dense':>10s} {'faster':>7s} {'chosen':>7s}")
    for density in SWEEP_DENSITIES:
        for columns in SWEEP_COLUMNS:
            ms = time_products(n_out, n_in, columns, density, repeats)
            csr, dense = ms["fwd csr"] + ms["dx csr"], ms["fwd dense"] + ms["dx dense"]
            mib, cache = operand(n_out, n_in, columns)
            chosen = "csr" if density < PRODUCT_CSR_MAX_DENSITY[B.name][cache] else "dense"
            print(f"{density:8.3f} {columns:6d} {mib:12.1f} {csr:11.2f} {dense:13.2f} {csr / dense:10.2f} "
                  f"{'csr' if csr < dense else 'dense':>7s} {chosen:>7s}", flush=True)
    print(thresholds_line())


def short_title(describe):
    """'backend: numpy (TINYITOP_BACKEND unset; not cupy: ...)' -> 'backend: numpy': the figure's title."""
    return describe.split(" (TINYITOP_BACKEND unset")[0]


def read_table(path):
    """(device line, {shape label: [row dict per density]}) from this benchmark's printed output."""
    keys = ("fwd csr", "fwd dense", "dx csr", "dx dense", "dW gather", "dW dense+take")
    lines = open(path).read().splitlines()
    title, results, label = short_title(lines[0].split(" | ")[0]), {}, None
    for line in lines[1:]:
        if ", M = " in line:
            label = line.split(", M = ")[0]
            results[label] = []
        elif label and line.strip() and line.split()[0].replace(".", "").isdigit() and len(line.split()) == 7:
            results[label].append(dict(zip(keys, map(float, line.split()[1:]))))
        elif line.startswith("Break-even"):
            break
    return title, results


def plot(results, path, title, backend):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = list(results)
    columns = min(4, len(labels))
    grid_rows = -(-len(labels) // columns)
    fig, axes = plt.subplots(grid_rows, columns, figsize=(3.4 * columns, 3.0 * grid_rows), squeeze=False)
    flat_axes = axes.reshape(-1)
    for ax in flat_axes[len(labels):]:
        ax.set_visible(False)
    for ax, label in zip(flat_axes, labels):
        rows = results[label]
        for key, style in (("fwd csr", "C0-"), ("fwd dense", "C0--"), ("dx csr", "C1-"), ("dx dense", "C1--"),
                           ("dW gather", "C2-"), ("dW dense+take", "C2--")):
            ax.plot(DENSITIES, [r[key] for r in rows], style, marker=".", label=key)
        ax.set_xscale("log")
        ax.set_yscale("log")
        shape = next((spec for spec in SHAPES + [WIDE] if spec[0] == label), None)
        if shape is not None:                      # the threshold this shape's products get at batch 128
            cache = cache_state((shape[1], shape[2]), shape[3] * 128, 4)
            ax.axvline(PRODUCT_CSR_MAX_DENSITY[backend][cache], color="grey", lw=0.8)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("density")
    for row in axes:
        row[0].set_ylabel("ms per product")
    flat_axes[0].legend(fontsize=7, title="solid: sparse path\ndashed: dense path", title_fontsize=7)
    fig.suptitle(f"{title}, batch 128: is the sparse product faster? (grey line: tinyitop's threshold)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
