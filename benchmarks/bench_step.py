"""ms per training step of the tinyitop in a given tree, in this process, synchronised on a GPU.

Compares two versions of the code on one machine (e.g. a `git worktree` of an older commit):
  python benchmarks/bench_step.py TREE MODEL:SPARSITY:STEPS [...]
  python benchmarks/bench_step.py . resnet18:0.95:3 resnet18:0:3 mlp:0.95:50
MODEL is mlp (3072-1024-512-10), resnet18 or vgg16 (CIFAR-10 shapes); sparsity 0 is dense, else ERK.
Batch 128, random inputs, 3 warm-up steps on a GPU (1 on a CPU), every layer's input gradient
computed (as any older tree does).
"""
import argparse
import importlib.util
import os
import sys
import time

import numpy as np

MODELS = ("mlp", "resnet18", "vgg16")


def _options_module():
    """tinyitop/options.py of this checkout, loaded alone: importing the tinyitop package here would
    shadow the tree under test, which is imported after parsing."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tinyitop", "options.py")
    spec = importlib.util.spec_from_file_location("bench_step_options", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def workload(text):
    """'MODEL:SPARSITY:STEPS' -> (model, sparsity in [0, 1), steps in [1, 10000])."""
    parts = text.split(":")
    try:
        name, sparsity, steps = parts[0], float(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        raise argparse.ArgumentTypeError(f"expected MODEL:SPARSITY:STEPS (e.g. mlp:0.95:50), got {text!r}") from None
    if len(parts) != 3 or name not in MODELS or not 0 <= sparsity < 1 or not 1 <= steps <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r}: MODEL one of {', '.join(MODELS)}, SPARSITY in [0, 1), "
                                         "STEPS in [1, 10000]")
    return name, sparsity, steps


def parse(argv=None):
    """The tree and the workloads, checked before any import from the tree."""
    options = _options_module()
    parser = options.Parser(description=__doc__.splitlines()[0])
    parser.add_argument("tree", help="a checkout of tinyitop (a folder holding tinyitop/)")
    parser.add_argument("workloads", nargs="+", type=workload, metavar="MODEL:SPARSITY:STEPS")
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.tree, "tinyitop")):
        options.fail(f"{args.tree} is not a checkout of tinyitop (no tinyitop/ folder in it)")
    return args


def main(argv=None):
    args = parse(argv)
    sys.path.insert(0, os.path.abspath(args.tree))
    from tinyitop import backend as B, SGD, SoftmaxCrossEntropy, mlp
    from tinyitop.models import resnet18, sparsify, vgg16

    def sync():
        if B.name == "cupy":
            B.xp.cuda.Device().synchronize()

    for name, sparsity, steps in args.workloads:
        B.seed(0)
        if name == "mlp":
            model, shape = mlp(3072, (1024, 512), 10, sparsity=sparsity or None), (128, 3072)
        else:
            model, shape = {"resnet18": resnet18, "vgg16": vgg16}[name](10), (128, 3, 32, 32)
            if sparsity:
                sparsify(model, sparsity, "erk")
        optimizer, loss_fn = SGD(model.named_parameters(), lr=0.01), SoftmaxCrossEntropy()
        rng = np.random.default_rng(0)
        x = B.to_device(rng.standard_normal(shape), dtype="float32")
        y = B.to_device(rng.integers(0, 10, 128))

        def step():
            loss_fn.forward(model.forward(x), y)
            model.backward(loss_fn.backward())
            optimizer.step()
        for _ in range(3 if B.name == "cupy" else 1):
            step()
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        print(f"{args.tree:>20s} {name:9s} sparsity {sparsity:4.2f}: "
              f"{1e3 * (time.perf_counter() - start) / steps:8.2f} ms/step", flush=True)


if __name__ == "__main__":
    main()
