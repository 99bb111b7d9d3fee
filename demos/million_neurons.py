"""A million neurons on a laptop: SET-ITOP (or RigL-ITOP) on Fashion-MNIST with three hidden layers of
333,333 neurons (784-333333-333333-333333-10), truly sparse end to end.

Held dense, this network's 222 billion weights would need 890 GB in float32 (2.7 TB with their gradient
and momentum). Truly sparse it keeps 8.0 million: weights, gradients, momentum, explored sets and the
checkpoint are all sized by the nonzeros (tinyitop/sparse.py, explore.py), and the figures count explored
connections per input pixel and crop one corner of a mask: nothing of layer size is ever allocated.
Why these settings:
- ER densities with epsilon 4 (SET, Mocanu et al. 2018): a layer keeps 4 (n_in + n_out) weights, so a
  hidden neuron has about 8 inputs from the layer before (4 of the 784 pixels in the first layer), and
  each of the 10 outputs reads 40% of the last hidden layer. --sparsity is the global figure (0.999964)
  that ER turns into these densities.
- Fan-in scaling (Evci et al. 2020): a neuron's initial weights are scaled by its actual number of
  inputs (~8), not the dense fan-in (333,333), which would start three layers deep with vanishing signals.
- The paper's MLP optimiser (SGD lr 0.1, Nesterov momentum 0.9, weight decay 5e-4, batch 128): 50
  iterations of it reach ~80% test accuracy at this size (the --quick run).
- Delta T = 100 iterations, prune rate 0.5 with cosine decay: about four topology updates per epoch, since
  the paper's 1500 would explore only twice in a few epochs. No validation split: all 60k images train.
- RigL: its growth scores |dL/dw| at *every* absent position. tinyitop never holds that dense gradient
  (one block of rows at a time), but still computes it: 2.2e11 scores per update, minutes on a CPU.
  So RigL's --quick run uses 3 x 33,333 neurons; `--method rigl` without --quick trains the full net.

    python demos/million_neurons.py                  # SET-ITOP, 3 epochs (about half an hour each here)
    python demos/million_neurons.py --quick          # 50 iterations of SET-ITOP: ~5 minutes, ~1.4 GB
    python demos/million_neurons.py --method rigl --quick
The report (s/epoch, peak memory, what the dense net would need, accuracy, R_s) lands in OUT/report.md.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from tinyitop.cli import demo_main  # noqa: E402
from tinyitop.metrics import format_rs, read_jsonl  # noqa: E402
from tinyitop.atomic import atomic_write  # noqa: E402
from tinyitop.rundir import claim, record_drawn  # noqa: E402
from tinyitop.train import Config  # noqa: E402

HIDDEN = 333_333                  # x 3 layers: 999,999 hidden neurons
RIGL_QUICK_HIDDEN = 33_333        # RigL's --quick: one exact growth step is ~100x cheaper
EPSILON = 4                       # ER: a layer keeps EPSILON * (n_in + n_out) weights
IN_FEATURES, CLASSES = 784, 10    # Fashion-MNIST


def sparsity_for_epsilon(sizes, epsilon):
    """The global sparsity at which ER gives every layer epsilon * (n_in + n_out) weights (no layer may
    reach density 1 at that epsilon, which holds for these sizes)."""
    layers = list(zip(sizes[:-1], sizes[1:]))
    return 1 - epsilon * sum(n_in + n_out for n_in, n_out in layers) / sum(n_in * n_out for n_in, n_out in layers)


def net_settings(width):
    """Config fields of the 784-width x 3-10 network at ER epsilon EPSILON."""
    hidden = (width,) * 3
    return {"hidden": hidden, "sparsity": sparsity_for_epsilon([IN_FEATURES, *hidden, CLASSES], EPSILON)}


PAPER = Config(model="mlp", dataset="fashion-mnist", method="set", init="er", fan_in_scaling=True,
               update_interval=100, prune_rate=0.5, epochs=3, batch_size=128, lr=0.1, val_fraction=0.0,
               out="runs/million_neurons", **net_settings(HIDDEN))
QUICK = {"epochs": 1, "limit_train": 6400, "update_interval": 10}


MAX_WIDTH = 100_000_000           # 10^8 neurons a layer would need ~500 GB: the memory check says so


def width_arg(text):
    if not text.isdigit() or not 100 <= int(text) <= MAX_WIDTH:
        raise argparse.ArgumentTypeError(f"expected a whole number of neurons in [100, {MAX_WIDTH:,}]; got {text!r}")
    return int(text)


def add_arguments(parser):
    parser.add_argument("--method", choices=("set", "rigl"), default="set",
                        help="SET-ITOP (random growth) or RigL-ITOP (gradient growth) (default: %(default)s)")
    parser.add_argument("--width", type=width_arg, default=None,
                        help=f"neurons per hidden layer (default: {HIDDEN:,}; {RIGL_QUICK_HIDDEN:,} for rigl --quick)")


def adjust(args, settings):
    width = args.width or (RIGL_QUICK_HIDDEN if args.method == "rigl" and args.quick else HIDDEN)
    # The default folder (runs/million_neurons[_DATASET][_quick]) gets the method too: _set or _rigl.
    out = settings["out"] if args.out != PAPER.out else settings["out"].replace(PAPER.out, f"{PAPER.out}_{args.method}", 1)
    return {**settings, **net_settings(width), "method": args.method, "growth": None, "out": out}


def report(config, run):
    """OUT/report.md: the run's cost and result next to what the dense network would need."""
    rows = read_jsonl(os.path.join(config.out, "metrics.jsonl"))
    summary = run.summary
    sizes = [run.data.in_features, *config.hidden, run.data.num_classes]
    dense_weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    active = sum(rows[-1]["nnz_per_layer"].values())
    peaks = [r["peak_rss_mb"] for r in rows if r.get("peak_rss_mb")]
    density = active / dense_weights
    table = [
        ("network", f"{'-'.join(str(s) for s in sizes)} ({sum(config.hidden):,} hidden neurons)"),
        ("method", f"{config.method} ({config.growth} growth), ER epsilon {EPSILON}, Delta T {config.update_interval}"),
        ("epochs x training images", f"{len(rows)} x {rows[-1]['samples_per_s'] * rows[-1]['seconds']:,.0f}"),
        ("active weights", f"{active:,} of {dense_weights:,} (density {density:.3g})"),
        ("s/epoch (training only)", f"{sum(r['train_seconds'] for r in rows) / len(rows):,.1f}"),
        ("s/epoch (with test evaluation)", f"{sum(r['seconds'] for r in rows) / len(rows):,.1f}"),
        ("peak memory (RSS)", f"{max(peaks) / 1024:.2f} GiB" if peaks else "unknown here"),
        ("dense float32 weights would need", f"{dense_weights * 4 / 2 ** 30:,.1f} GiB "
                                              f"({dense_weights * 12 / 2 ** 30:,.1f} with gradient and momentum)"),
        ("test accuracy (last epoch)", f"{summary['last_test_acc']:.4f}"),
        ("R_s (explored / all weights)", f"{format_rs(summary['final_rs'])} = {summary['final_rs'] / density:.2f} "
                                         "x the active density"),
    ]
    lines = [f"# {os.path.basename(os.path.normpath(config.out))}", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in table]
    text = "\n".join(lines) + "\n"
    path = os.path.join(config.out, "report.md")
    claim(config.out, ["report.md"])                 # refuses to replace a report.md of the user's
    atomic_write(path, lambda f: f.write(text.encode()))
    record_drawn(config.out, ["report.md"])         # a report.md the user edits later is theirs: never replaced
    print(text + f"report: {path}")


def main(argv=None):
    return demo_main(__doc__.splitlines()[0], PAPER, QUICK, argv, add_arguments=add_arguments, adjust=adjust,
                     after=report)


if __name__ == "__main__":
    sys.exit(main())
