"""ResNet-34 on CIFAR-100 with SET-ITOP at sparsity 0.95 (ERK), Delta T 1000 (Liu et al. 2021, Fig. 4).

    python demos/resnet34_cifar100.py --quick   # a smoke run of a few minutes on a CPU
    python demos/resnet34_cifar100.py           # the paper's 250 epochs: use a GPU (TINYITOP_BACKEND=cupy)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from tinyitop.cli import demo_main  # noqa: E402
from tinyitop.train import Config  # noqa: E402

PAPER = Config(model="resnet34", dataset="cifar100", method="set", sparsity=0.95, init="erk",
               update_interval=1000, prune_rate=0.5, epochs=250, batch_size=128, lr=0.1, out="runs/resnet34_cifar100")
QUICK = {"epochs": 1, "limit_train": 256, "batch_size": 64, "update_interval": 2}


def main(argv=None):
    return demo_main(__doc__.splitlines()[0], PAPER, QUICK, argv)


if __name__ == "__main__":
    sys.exit(main())
