"""VGG-16 ("vgg-c") on CIFAR-10 with SET-ITOP at sparsity 0.95 (ERK), Delta T 2000 (Liu et al. 2021, Fig. 4).

    python demos/vgg16_cifar10.py --quick   # a smoke run of a few minutes on a CPU
    python demos/vgg16_cifar10.py           # the paper's 250 epochs: use a GPU (TINYITOP_BACKEND=cupy)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from tinyitop.cli import demo_main  # noqa: E402
from tinyitop.train import Config  # noqa: E402

PAPER = Config(model="vgg16", dataset="cifar10", method="set", sparsity=0.95, init="erk", update_interval=2000,
               prune_rate=0.5, epochs=250, batch_size=128, lr=0.1, out="runs/vgg16_cifar10")
QUICK = {"epochs": 2, "limit_train": 640, "batch_size": 64, "update_interval": 5}


def main(argv=None):
    return demo_main(__doc__.splitlines()[0], PAPER, QUICK, argv)


if __name__ == "__main__":
    sys.exit(main())
