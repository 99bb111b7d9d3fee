"""ms per training step of the tinyitop in a given tree, in this process, synchronised on a GPU.

Compares two versions of the code on one machine (e.g. a `git worktree` of an older commit):
  python benchmarks/bench_step.py TREE MODEL:SPARSITY:STEPS [...]
  python benchmarks/bench_step.py . resnet18:0.95:3 resnet18:0:3 mlp:0.95:50
MODEL is mlp (3072-1024-512-10), resnet18 or vgg16 (CIFAR-10 shapes); sparsity 0 is dense, else ERK.
Batch 128, random inputs, 3 warm-up steps on a GPU (1 on a CPU), every layer's input gradient
computed (as any older tree does).
"""
import sys
import time

import numpy as np

sys.path.insert(0, sys.argv[1])
from tinyitop import backend as B, SGD, SoftmaxCrossEntropy, mlp
from tinyitop.models import resnet18, vgg16, sparsify
def sync():
    if B.name == "cupy": B.xp.cuda.Device().synchronize()
def run(name, sparsity, steps):
    B.seed(0)
    if name == "mlp":
        model = mlp(3072, (1024, 512), 10, sparsity=sparsity or None); shape = (128, 3072)
    else:
        model = {"resnet18": resnet18, "vgg16": vgg16}[name](10); shape = (128, 3, 32, 32)
        if sparsity: sparsify(model, sparsity, "erk")
    opt = SGD(model.named_parameters(), lr=0.01); lf = SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    x = B.to_device(rng.standard_normal(shape), dtype="float32"); y = B.to_device(rng.integers(0, 10, 128))
    def step():
        lf.forward(model.forward(x), y); model.backward(lf.backward()); opt.step()
    for _ in range(3 if B.name == "cupy" else 1): step()
    sync(); t = time.perf_counter()
    for _ in range(steps): step()
    sync()
    print(f"{sys.argv[1]:>20s} {name:9s} sparsity {sparsity:4.2f}: {1e3 * (time.perf_counter() - t) / steps:8.2f} ms/step", flush=True)
for spec in sys.argv[2:]:
    n, s, k = spec.split(":"); run(n, float(s), int(k))
