"""RigL's memory on a wide truly sparse MLP: peak RSS of one short training run, in its own process.

RigL grows where the minibatch's |dL/dw| is largest among the absent weights. Materialising that
dense (out, in) gradient costs 1.6 GB per 20000x20000 layer; tinyitop scores it one block of rows at
a time (tinyitop/topology.py, top_gradient_positions), so the peak stays near SET's.
  python benchmarks/bench_rigl_memory.py [--hidden 20000] [--sparsity 0.999]
Default: 784-20000x3-10 at 0.999 (ER), one epoch of 1,280 Fashion-MNIST samples (random 28x28
images if Debian's dataset-fashion-mnist is absent), a topology update every 5 iterations.
"""
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench_options import Parser, fail, fraction, whole_number

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_of_run(method, hidden, sparsity, dataset, out):
    args = [sys.executable, "-m", "tinyitop", "train", "--dataset", dataset, "--hidden", ",".join([str(hidden)] * 3),
            "--init", "er", "--sparsity", str(sparsity), "--method", method, "--limit-train", "1280",
            "--epochs", "1", "--update-interval", "5", "--out", out, "--no-progress", "--no-plots"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:                    # the training run's own one-line error, not a traceback here
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        fail(f"the {method} run failed: {lines[-1].removeprefix('error: ')}")
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (peak if peak > before else float("nan")) / 1024, seconds


def parse(argv=None):
    """The options, checked before any run."""
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=whole_number(1, 1_000_000), default=20000)
    parser.add_argument("--sparsity", type=fraction, default=0.999)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    with tempfile.TemporaryDirectory() as scratch:
        dataset = "fashion-mnist"
        if not os.path.exists("/usr/share/datasets/fashion-mnist"):
            rng = np.random.default_rng(0)
            dataset = os.path.join(scratch, "random28.npz")
            np.savez(dataset, train_x=rng.integers(0, 256, (1500, 1, 28, 28), dtype=np.uint8),
                     train_y=rng.integers(0, 10, 1500), test_x=rng.integers(0, 256, (200, 1, 28, 28), dtype=np.uint8),
                     test_y=rng.integers(0, 10, 200))
        dense_gb = 3 * args.hidden * args.hidden * 4 / 2 ** 30
        print(f"784-{args.hidden}x3-10 at sparsity {args.sparsity} (ER), 10 iterations, data: {dataset}")
        print(f"one dense (out, in) float32 gradient of a hidden layer: {dense_gb / 3:.2f} GiB")
        print(f"{'method':8s} {'peak RSS MB':>12s} {'seconds':>8s}")
        # RigL first: RUSAGE_CHILDREN keeps the largest child so far, so the smaller run must come second
        for method in ("rigl", "set"):
            peak, seconds = peak_of_run(method, args.hidden, args.sparsity, dataset, os.path.join(scratch, method))
            shown = f"{peak:12.0f}" if peak == peak else f"{'<= above':>12s}"
            print(f"{method:8s} {shown} {seconds:8.1f}", flush=True)


if __name__ == "__main__":
    main()
