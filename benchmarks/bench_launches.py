"""GPU kernel launches per training step, counted on a CPU with the CuPy stand-in (tests/fake_cupy.py).

On a GPU each small array operation costs ~12.5 us of launch overhead from Python (measured on an H200, docs/SPEED.md), so
the number of launches per step bounds a small network's step time from below. The stand-in sees
every array operation the CuPy path does: it counts one launch for each that writes an array (views
and allocations count none). It cannot compile CUDA, so here `tinyitop.fused.kernel` hands out a
stand-in for each compiled kernel that counts one launch and returns outputs of the right shape
(zeros: launches are counted, not results), so the step takes the CuPy path exactly. Counted:
forward, loss, backward and optimizer step of the 3rd step (no topology update), batch 8; the batch
pipeline is not included. Needs `pip install cupy-cuda12x`.

    python benchmarks/bench_launches.py                      # this tree
    python benchmarks/bench_launches.py --before OLD_TREE    # and another checkout, side by side
(e.g. OLD_TREE from `mkdir -p /tmp/old && git archive 3ebd7da tinyitop | tar -x -C /tmp/old`)
"""
import json
import os
import subprocess
import sys

import numpy as np

from bench_options import Parser, fail

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = (("paper MLP, SET 0.95", "mlp", 0.95), ("paper MLP, dense", "mlp", 0.0),
             ("ResNet-18, 0.95 ERK", "resnet18", 0.95), ("ResNet-18, dense", "resnet18", 0.0),
             ("VGG-16, 0.95 ERK", "vgg16", 0.95))
BATCH = 8


def count_one_tree(tree):
    """{workload: launches in one training step} for the tinyitop package found in `tree`."""
    sys.path[:0] = [tree, os.path.join(ROOT, "tests")]
    import fake_cupy
    from tinyitop import backend as B
    from tinyitop.losses import SoftmaxCrossEntropy
    from tinyitop.models import mlp, resnet18, sparsify, vgg16
    from tinyitop.optim import SGD
    if not fake_cupy.AVAILABLE:
        raise SystemExit("error: the stand-in checks names against CuPy: pip install cupy-cuda12x (no GPU needed)")
    try:
        from tinyitop import fused
    except ImportError:                       # a tree from before tinyitop/fused.py
        fused = None
    if fused is not None:                     # each compiled kernel: one launch
        name = "kernel" if hasattr(fused, "kernel") else "_kernel"      # its name before this tree
        setattr(fused, name, lambda kernel: _CountingKernel(fused._CUDA[kernel], fake_cupy))
    B.use_modules("cupy", fake_cupy.xp, fake_cupy.sparse)
    np.seterr(all="ignore")                   # the counting kernels' zeros make infs and NaNs downstream
    counts = {}
    for label, name, sparsity in WORKLOADS:
        B.seed(0)
        if name == "mlp":
            model, shape = mlp(3072, (1024, 512), 10, sparsity=sparsity or None), (BATCH, 3072)
        else:
            model, shape = {"resnet18": resnet18, "vgg16": vgg16}[name](10), (BATCH, 3, 32, 32)
            if sparsity:
                sparsify(model, sparsity, "erk")
        optimizer, loss_fn = SGD(model.named_parameters(), lr=0.01), SoftmaxCrossEntropy()
        rng = np.random.default_rng(0)
        x = B.to_device(rng.standard_normal(shape), dtype="float32")
        y = B.to_device(rng.integers(0, 10, BATCH))
        for step in range(3):
            fake_cupy.LAUNCHES["count"] = 0
            loss_fn.forward(model.forward(x), y)
            model.backward(loss_fn.backward())
            optimizer.step()
        counts[label] = fake_cupy.LAUNCHES["count"]
    return counts


class _CountingKernel:
    """Stands in for a compiled `cupy.ElementwiseKernel` (inputs, outputs, body): one launch per call.

    Returns the outputs it was given, or new zero arrays shaped as CuPy would make them: the broadcast
    shape of the non-raw array inputs, the dtype of the first input of the output's type.
    """

    def __init__(self, definition, fake_cupy):
        inputs, outputs, _ = definition
        self.inputs = [part.split() for part in inputs.split(",")]
        self.outputs = [part.split() for part in outputs.split(",")]
        self.fake_cupy = fake_cupy

    def __call__(self, *args):
        self.fake_cupy.LAUNCHES["count"] += 1
        given = list(args[len(self.inputs):])
        if not given:
            arrays = [(words[-2], a) for words, a in zip(self.inputs, args)
                      if words[0] != "raw" and hasattr(a, "shape")]
            shape = np.broadcast_shapes(*[a.shape for _, a in arrays])
            for words in self.outputs:
                dtype = next((a.dtype for kind, a in arrays if kind == words[-2]), np.float32)
                given.append(self.fake_cupy.DeviceArray(np.zeros(shape, dtype=dtype)))
        return given[0] if len(given) == 1 else tuple(given)


# Each tree is counted in a fresh process: two trees' tinyitop packages cannot share one.
WORKER = ("import json, sys; sys.path.insert(0, sys.argv[1]); import bench_launches; "
          "print(json.dumps(bench_launches.count_one_tree(sys.argv[2])))")


def _counts_in_subprocess(tree):
    result = subprocess.run([sys.executable, "-c", WORKER, os.path.dirname(os.path.abspath(__file__)), tree],
                            capture_output=True, text=True)
    if result.returncode:
        fail(f"counting the launches of {tree} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(result.stdout)


def parse(argv=None):
    """The options, checked before anything is counted."""
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="another checkout's root (holding tinyitop/) to count side by side")
    args = parser.parse_args(argv)
    if args.before is not None and not os.path.isdir(os.path.join(args.before, "tinyitop")):
        fail(f"--before {args.before}: not a checkout (no tinyitop/ folder in it)")
    return args


def main(argv=None):
    args = parse(argv)
    now = _counts_in_subprocess(ROOT)
    before = _counts_in_subprocess(os.path.abspath(args.before)) if args.before else None
    print(f"kernel launches per training step (CuPy stand-in, batch {BATCH})")
    print(f"{'workload':22s} {'before':>8s} {'now':>8s} {'now/before':>11s}" if before else f"{'workload':22s} {'now':>8s}")
    for label, *_ in WORKLOADS:
        if before:
            print(f"{label:22s} {before[label]:8d} {now[label]:8d} {now[label] / before[label]:11.2f}")
        else:
            print(f"{label:22s} {now[label]:8d}")


if __name__ == "__main__":
    main()
