"""Truly sparse training speed and memory against the dense model of the same shape.

Each configuration runs in a fresh process (so its peak RSS is its own) and reports ms per training
step (forward + backward + SGD, batch 128), peak RSS, and bytes held by weights + optimizer state.
  A. the paper's MLP 3072-1024-512-10 at several sparsities (ERK)
  B. a wide MLP 784-10000-10000-10000-10 at 0.99 and 0.999 (ERK)
  C. Fashion-MNIST 784-1000-1000-1000-10, SET epsilon 20 (ER): one epoch of 60k samples, and the
     cost of one topology update relative to Delta T = 1000 iterations
  D. the paper's conv nets, ResNet-18 and VGG-16 (CIFAR-10 shapes), dense and at 0.95 (ERK)
Runs on either backend (TINYITOP_BACKEND), every timing synchronised on a GPU. Each sparse layer's
paths (tinyitop/sparse_kernels.py choose_paths) are printed. When PyTorch happens to be importable, a
column gives its step on the same device, dense and masked the way the ITOP reference trains
(benchmarks/torch_reference.py); torch is never a dependency.
Usage: python benchmarks/bench_sparse.py [--quick] [--sections ABCD]
"""
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_layers import sync  # noqa: E402  (first: tinyitop sets OpenBLAS's thread timeout before NumPy loads)
import numpy as np  # noqa: E402
from tinyitop import SGD, SoftmaxCrossEntropy, backend as B, mlp  # noqa: E402
from tinyitop.explore import Exploration  # noqa: E402
from tinyitop.models import resnet18, skip_input_gradient, sparsify, vgg16  # noqa: E402
from tinyitop.sparse import SPARSE_TYPES  # noqa: E402
from bench_options import Parser, fail, positive_number  # noqa: E402
from tinyitop.topology import TopologyUpdater, sparse_layers  # noqa: E402

CONV_MODELS = {"resnet18": resnet18, "vgg16": vgg16}


def torch_ms(spec, densities):
    """PyTorch's step on this device for the same network, or None without torch."""
    try:
        import torch
        import torch_reference as ref
    except ImportError:
        return None
    device = "cuda" if B.name == "cupy" and torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(os.cpu_count())
    if spec.get("model") in CONV_MODELS:
        model, shape, classes = getattr(ref, spec["model"])(width=spec.get("width", 1.0)), (128, 3, 32, 32), 10
    else:
        model, shape, classes = ref.mlp(spec["sizes"]), (128, spec["sizes"][0]), spec["sizes"][-1]
    return ref.step_ms(model, shape, classes, spec["steps"], device, densities)


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
    sparsity, init, steps = spec["sparsity"], spec["init"], spec["steps"]
    B.seed(0)
    if spec.get("model") in CONV_MODELS:
        model = CONV_MODELS[spec["model"]](10, width=spec.get("width", 1.0))
        if sparsity:
            sparsify(model, sparsity, init)
        sizes = None
    else:
        sizes = spec["sizes"]
        model = mlp(sizes[0], sizes[1:-1], sizes[-1], sparsity=sparsity, init=init)
    skip_input_gradient(model)          # as train.py does: no dL/d(images)
    optimizer = SGD(model.named_parameters(), lr=0.01)
    exploration = Exploration(sparse_layers(model))
    loss_fn = SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    if spec.get("fashion"):
        from tinyitop.data import batches, load
        data = load("fashion-mnist")
        feed = lambda: batches(data.train_x, data.train_y, 128, data.mean, data.std, rng)  # noqa: E731
    else:
        shape, classes = ((128, 3, 32, 32), 10) if sizes is None else ((128, sizes[0]), sizes[-1])
        x = B.to_device(rng.standard_normal(shape), dtype="float32")
        y = B.to_device(rng.integers(0, classes, 128))
        feed = lambda: ((x, y) for _ in range(steps))  # noqa: E731

    def run_steps():
        count = 0
        for images, labels in feed():
            loss_fn.forward(model.forward(images), labels)
            model.backward(loss_fn.backward())
            optimizer.step()
            count += 1
        return count

    first = next(iter(feed()))   # warm-up steps (first-touch allocations, cached plans; on a GPU also
    for _ in range(3 if B.name == "cupy" else 1):   # kernel compilation, memory pool growth, clocks)
        loss_fn.forward(model.forward(first[0]), first[1])
        model.backward(loss_fn.backward())
        optimizer.step()
    sync()
    start = time.perf_counter()
    count = run_steps()
    sync()
    seconds = time.perf_counter() - start
    layers = sparse_layers(model)
    result = {"ms_per_step": 1e3 * seconds / count, "steps": count, "seconds": seconds,
              "held_mb": held_bytes(model, optimizer, exploration) / 2 ** 20,
              "paths": {n: "/".join(layer.paths()) for n, layer in layers.items()},
              "densities": {n: round(layer.weight.density, 4) for n, layer in layers.items()}}
    if spec.get("torch") and not spec.get("fashion"):
        densities = None
        if sparsity:   # every Conv2d/Linear in definition order: sparse ones at their density, others dense
            densities = [layer.weight.density if isinstance(layer, SPARSE_TYPES) else 1.0
                         for _, layer in model.named_modules() if isinstance(layer, SPARSE_TYPES)
                         or type(layer).__name__ in ("Conv2d", "Linear")]
        result["torch_ms"] = torch_ms(spec, densities)
    if sparsity is not None and spec.get("update"):
        updater = TopologyUpdater(model, optimizer, exploration, method="set", update_interval=1, total_steps=10)
        t0 = time.perf_counter()
        updater.maybe_update(1)
        exploration.record_updates(updater.last_update)                  # as train_epoch does
        result["update_ms"] = 1e3 * (time.perf_counter() - t0)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# A workload runs alone in a fresh process: its own heap (so peak RSS is its own) and no warm caches.
WORKER = "import json, sys; sys.path.insert(0, sys.argv[1]); import bench_sparse; bench_sparse.one(json.loads(sys.argv[2]))"


def launch(spec):
    """`one(spec)` in a fresh process: its JSON result."""
    done = subprocess.run([sys.executable, "-c", WORKER, os.path.dirname(os.path.abspath(__file__)), json.dumps(spec)],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        fail(f"the workload {json.dumps(spec)} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(title, rows):
    print(f"\n{title}")
    print(f"{'sparsity':>9s} {'ms/step':>9s} {'x faster':>9s} {'held MB':>9s} {'mem ratio':>9s} "
          f"{'peak RSS MB':>12s} {'torch ms':>9s} {'ours/torch':>10s}  product/gradient path per sparse layer")
    dense = rows[0][1]
    for label, r in rows:
        torch_ms_ = r.get("torch_ms")
        torch_cols = f"{torch_ms_:9.2f} {r['ms_per_step'] / torch_ms_:10.2f}" if torch_ms_ else f"{'-':>9s} {'-':>10s}"
        print(f"{label:>9s} {r['ms_per_step']:9.2f} {dense['ms_per_step'] / r['ms_per_step']:9.2f} "
              f"{r['held_mb']:9.1f} {r['held_mb'] / dense['held_mb']:9.4f} {r['peak_rss_mb']:12.0f} {torch_cols}  "
              f"{', '.join(f'{n}:{p}' for n, p in r['paths'].items())}")


def parse(argv=None):
    """The options, checked before any timing."""
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps; skips the wide dense baseline's repeats")
    parser.add_argument("--sections", default="ABCD", help="which tables to run (default: ABCD)")
    parser.add_argument("--no-torch", action="store_true", help="leave out the PyTorch column even if torch imports")
    parser.add_argument("--width", type=positive_number(4), default=1.0,
                        help="conv nets (section D): channel counts x WIDTH, at most 4 (default: 1)")
    args = parser.parse_args(argv)
    if not args.sections or set(args.sections) - set("ABCD"):
        fail(f"--sections {args.sections!r}: give one or more of the letters A, B, C, D (e.g. AB)")
    return args


def main(argv=None):
    args = parse(argv)
    print(B.describe(), f"| {os.cpu_count()} cores | ratios are what matter")
    gpu = B.name == "cupy"
    steps = (20 if gpu else 5) if args.quick else (100 if gpu else 20)
    use_torch = not args.no_torch
    if "A" in args.sections:
        paper = [3072, 1024, 512, 10]
        rows = [(f"{s:.2f}" if s else "dense", launch({"sizes": paper, "sparsity": s or None, "init": "erk",
                                                        "steps": steps, "torch": use_torch}))
                for s in (0, 0.8, 0.9, 0.95, 0.98, 0.99)]
        table("A. paper MLP 3072-1024-512-10, ERK, batch 128", rows)
    if "D" in args.sections:
        conv_steps = (10 if gpu else 2) if args.quick else (30 if gpu else 4)
        for name in CONV_MODELS:
            rows = [(f"{s:.2f}" if s else "dense", launch({"model": name, "sparsity": s or None, "init": "erk",
                                                            "steps": conv_steps, "torch": use_torch, "width": args.width}))
                    for s in (0, 0.95)]
            table(f"D. {name} (CIFAR-10 shapes, width {args.width:g}), ERK, batch 128", rows)
    if "B" not in args.sections and "C" not in args.sections:
        return

    wide = [784, 10000, 10000, 10000, 10]
    if "B" in args.sections:
        rows = [("dense", launch({"sizes": wide, "sparsity": None, "init": "erk", "steps": 2 if args.quick else 3}))]
        rows += [(f"{s}", launch({"sizes": wide, "sparsity": s, "init": "erk", "steps": steps})) for s in (0.99, 0.999)]
        table("B. wide MLP 784-10000-10000-10000-10, ERK, batch 128", rows)
    if "C" not in args.sections:
        return

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
