"""Whether two checkouts train to the same bits: a speed change must not change results.

Trains VGG-16 and ResNet-18 (width 1/4, sparse 0.9 ERK and dense) and the paper MLP (0.95 and 0.99
ERK, whose layers take every gradient path, and dense), batch 64, Nesterov SGD with weight decay, for 3 steps from seed 0 in each tree, the last one keeping the dense gradients a RigL
update scores, then one eval forward, and prints a hash of the losses, those gradients, the eval
logits and every parameter; the same hash means the same masks, weights and R_s.

    python benchmarks/same_bits.py OLD_TREE .      # e.g. OLD_TREE from `git worktree add /tmp/old REV`
"""
import os
import subprocess
import sys

from bench_options import Parser, fail

CHILD = r"""
import hashlib, sys
sys.path.insert(0, sys.argv[1])
from tinyitop import backend as B, SGD, SoftmaxCrossEntropy
from tinyitop.models import mlp, resnet18, sparsify, vgg16
from tinyitop.topology import sparse_layers
import numpy as np
B.use("numpy")
paper_mlp = lambda classes, width: mlp(3072, [1024, 512], classes)
for name, make, sparsity in (("vgg16", vgg16, 0.9), ("resnet18", resnet18, 0.9),
                             ("vgg16-dense", vgg16, 0.0), ("resnet18-dense", resnet18, 0.0),
                             ("mlp-0.95", paper_mlp, 0.95), ("mlp-0.99", paper_mlp, 0.99), ("mlp-dense", paper_mlp, 0.0)):
    B.seed(0)
    model = make(10, width=0.25)
    if sparsity:
        sparsify(model, sparsity, "erk")
    opt = SGD(model.named_parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn, rng, digest = SoftmaxCrossEntropy(), np.random.default_rng(0), hashlib.sha256()
    for step in range(3):
        rigl = step == 2 and sparsity > 0      # the last step keeps the dense gradients RigL scores
        for layer in sparse_layers(model).values():
            layer.keep_dense_grad = rigl
        x = B.to_device(rng.standard_normal((64, 3, 32, 32)), dtype="float32")
        digest.update(np.float64(loss_fn.forward(model.forward(x), B.to_device(rng.integers(0, 10, 64)))).tobytes())
        model.backward(loss_fn.backward())
        for layer in sparse_layers(model).values() if rigl else ():
            if layer.dense_grad is not None:
                digest.update(np.ascontiguousarray(B.to_host(layer.dense_grad)).tobytes())
        opt.step()
    digest.update(np.ascontiguousarray(B.to_host(model.eval().forward(x))).tobytes())
    for _, p in model.named_parameters():
        digest.update(np.ascontiguousarray(B.to_host(p.data)).tobytes())
    print(name, digest.hexdigest()[:16])
"""


def parse(argv=None):
    """The two trees, checked before anything is trained."""
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2, metavar="TREE", help="two checkouts (folders holding tinyitop/)")
    trees = parser.parse_args(argv).trees
    for tree in trees:
        if not os.path.isdir(os.path.join(tree, "tinyitop")):
            fail(f"{tree} is not a checkout of tinyitop (no tinyitop/ folder in it)")
    return trees


def main(argv=None):
    trees = parse(argv)
    outputs = []
    for tree in trees:
        done = subprocess.run([sys.executable, "-c", CHILD, os.path.abspath(tree)], capture_output=True, text=True)
        if done.returncode:
            fail(f"training in {tree} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        outputs.append(done.stdout.split())
        print(f"{tree}: {' '.join(outputs[-1])}")
    print("same bits" if outputs[0] == outputs[1] else "DIFFERENT bits")
    raise SystemExit(0 if outputs[0] == outputs[1] else 1)


if __name__ == "__main__":
    main()
