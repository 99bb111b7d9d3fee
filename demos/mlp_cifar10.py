"""The paper's MLP (3072-1024-512-10) on CIFAR-10, trained sparse from scratch with SET-ITOP.

Paper settings (Liu et al. 2021, Fig. 4): sparsity 0.95 with ERK densities, topology update every
1500 iterations pruning 50% of the weights at first (cosine decay), SGD lr 0.1, batch 128, 200 epochs.
Watch test accuracy and the ITOP rate R_s grow; metrics and figures land in runs/mlp_cifar10/.

    python demos/mlp_cifar10.py            # the paper's run (hours on a CPU, minutes on a GPU)
    python demos/mlp_cifar10.py --quick    # a few minutes on a laptop CPU
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from tinyitop.cli import demo_main  # noqa: E402
from tinyitop.train import Config  # noqa: E402

PAPER = Config(model="mlp", hidden=(1024, 512), dataset="cifar10", method="set", sparsity=0.95, init="erk",
               update_interval=1500, prune_rate=0.5, epochs=200, batch_size=128, lr=0.1, out="runs/mlp_cifar10")
QUICK = {"epochs": 10, "limit_train": 20000, "update_interval": 50}


def main(argv=None):
    return demo_main(__doc__.splitlines()[0], PAPER, QUICK, argv)


if __name__ == "__main__":
    sys.exit(main())
