"""Truly sparse training speed and memory against the dense model of the same shape.

Each configuration runs in a fresh process (so its peak RSS is its own) and reports ms per training
step (forward + backward + SGD, batch 128), peak RSS, and bytes held by weights + optimizer state.
  A. the paper's MLP 3072-1024-512-10 at several sparsities (ERK)
  B. a wide MLP 784-10000-10000-10000-10 at 0.99 and 0.999 (ERK)
  C. Fashion-MNIST 784-1000-1000-1000-10, SET epsilon 20 (ER): one epoch of 60k samples, and the
     cost of one topology update relative to Delta T = 1000 iterations
Usage: python benchmarks/bench_sparse.py [--quick]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tinyitop import SGD, SoftmaxCrossEntropy, backend as B, mlp  # noqa: E402
from tinyitop.explore import Exploration  # noqa: E402
from tinyitop.sparse import GATHER_MAX_DENSITY  # noqa: E402
from tinyitop.topology import TopologyUpdater, sparse_layers  # noqa: E402


def set_epsilon_sparsity(sizes, epsilon):
    """Global sparsity of SET's Erdos-Renyi init with this epsilon (dense where it exceeds 1)."""
    shapes = [(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)]
    active = sum(min(1.0, epsilon * (o + i) / (o * i)) * o * i for o, i in shapes)
    return 1 - active / sum(o * i for o, i in shapes)


def held_bytes(model, optimizer, exploration):
    total = sum(v.nbytes for v in optimizer.velocity.values()) + sum(s.nbytes() for s in exploration.sets.values())
    for _, p in model.named_parameters():
        total += p.nbytes() if hasattr(p, "nbytes") else p.data.nbytes + (p.grad.nbytes if p.grad is not None else 0)
    return total


def one(spec):
    """Run one configuration in this process; print a JSON line."""
    sizes, sparsity, init, steps = spec["sizes"], spec["sparsity"], spec["init"], spec["steps"]
    B.seed(0)
    model = mlp(sizes[0], sizes[1:-1], sizes[-1], sparsity=sparsity, init=init)
    optimizer = SGD(model.named_parameters(), lr=0.01)
    exploration = Exploration(sparse_layers(model))
    loss_fn = SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    if spec.get("fashion"):
        from tinyitop.data import batches, load
        data = load("fashion-mnist")
        feed = lambda: batches(data.train_x, data.train_y, 128, data.mean, data.std, rng)  # noqa: E731
    else:
        x = B.to_device(rng.standard_normal((128, sizes[0])), dtype="float32")
        y = B.to_device(rng.integers(0, sizes[-1], 128))
        feed = lambda: ((x, y) for _ in range(steps))  # noqa: E731

    def run_steps():
        count = 0
        for images, labels in feed():
            loss_fn.forward(model.forward(images), labels)
            model.backward(loss_fn.backward())
            optimizer.step()
            count += 1
        return count

    first = next(iter(feed()))   # warm-up step (first-touch allocations, cached plans)
    loss_fn.forward(model.forward(first[0]), first[1])
    model.backward(loss_fn.backward())
    optimizer.step()
    start = time.perf_counter()
    count = run_steps()
    seconds = time.perf_counter() - start
    result = {"ms_per_step": 1e3 * seconds / count, "steps": count, "seconds": seconds,
              "held_mb": held_bytes(model, optimizer, exploration) / 2 ** 20,
              "paths": {n: ("gather" if l.weight_param.density < GATHER_MAX_DENSITY else "dense+take")
                        for n, l in sparse_layers(model).items()},
              "densities": {n: round(l.weight_param.density, 4) for n, l in sparse_layers(model).items()}}
    if sparsity is not None and spec.get("update"):
        updater = TopologyUpdater(model, optimizer, exploration, method="set", update_interval=1, total_steps=10)
        t0 = time.perf_counter()
        updater.maybe_update(1)
        result["update_ms"] = 1e3 * (time.perf_counter() - t0)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def launch(spec):
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True,
                         check=True, env=dict(os.environ))
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(title, rows):
    print(f"\n{title}")
    print(f"{'sparsity':>9s} {'ms/step':>9s} {'x faster':>9s} {'held MB':>9s} {'mem ratio':>9s} "
          f"{'peak RSS MB':>12s}  gradient path per layer")
    dense = rows[0][1]
    for label, r in rows:
        print(f"{label:>9s} {r['ms_per_step']:9.1f} {dense['ms_per_step'] / r['ms_per_step']:9.2f} "
              f"{r['held_mb']:9.1f} {r['held_mb'] / dense['held_mb']:9.4f} {r['peak_rss_mb']:12.0f}  "
              f"{', '.join(f'{n}:{p}' for n, p in r['paths'].items())}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="fewer steps; skips the wide dense baseline's repeats")
    args = parser.parse_args()
    if args.one:
        return one(json.loads(args.one))
    print(B.describe(), f"| {os.cpu_count()} cores | ratios are what matter")
    steps = 5 if args.quick else 20
    paper = [3072, 1024, 512, 10]
    rows = [(f"{s:.2f}" if s else "dense", launch({"sizes": paper, "sparsity": s or None, "init": "erk", "steps": steps}))
            for s in (0, 0.8, 0.9, 0.95, 0.98, 0.99)]
    table("A. paper MLP 3072-1024-512-10, ERK, batch 128", rows)

    wide = [784, 10000, 10000, 10000, 10]
    rows = [("dense", launch({"sizes": wide, "sparsity": None, "init": "erk", "steps": 2 if args.quick else 3}))]
    rows += [(f"{s}", launch({"sizes": wide, "sparsity": s, "init": "erk", "steps": steps})) for s in (0.99, 0.999)]
    table("B. wide MLP 784-10000-10000-10000-10, ERK, batch 128", rows)

    fashion = [784, 1000, 1000, 1000, 10]
    sparsity = set_epsilon_sparsity(fashion, 20)
    have_data = os.path.exists("/usr/share/datasets/fashion-mnist")
    spec = {"sizes": fashion, "init": "er", "steps": 469, "fashion": have_data}
    rows = [("dense", launch({**spec, "sparsity": None})), (f"{sparsity:.4f}", launch({**spec, "sparsity": sparsity,
                                                                                         "update": True}))]
    table(f"C. Fashion-MNIST 784-1000-1000-1000-10, SET epsilon 20 (ER), one epoch of "
          f"{'60k real' if have_data else '60k random'} samples", rows)
    for label, r in rows:
        print(f"   {label}: {r['seconds']:.2f} s for {r['steps']} steps (one epoch)")
    r = rows[1][1]
    fraction = r["update_ms"] / (r["update_ms"] + 1000 * r["ms_per_step"])
    print(f"   one topology update (all layers, prune rate 0.5): {r['update_ms']:.1f} ms = "
          f"{100 * fraction:.2f}% of training time at Delta T = 1000 (goal < 5%)")


if __name__ == "__main__":
    main()
