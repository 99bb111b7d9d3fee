"""tinyitop: In-Time Over-Parameterization (Liu et al., ICML 2021) with truly sparse NumPy/CuPy layers.

Neural networks that are sparse from their first step and explore their connectivity as they
train (SET, RigL), with the ITOP rate R_s measuring how much of the dense network they have
explored. Weights are CSR matrices; every layer's backprop is written out by hand. Start with
demos/itop_from_scratch.py, then topology.py, explore.py, sparse.py and train.py (README.md).
"""
from tinyitop.openblas import BLAS_SPINS  # noqa: F401  (first: it must run before NumPy loads)

from tinyitop import backend  # noqa: E402
from tinyitop.blocks import BasicBlock, Bottleneck  # noqa: E402
from tinyitop.explore import Exploration  # noqa: E402
from tinyitop.init import layer_densities  # noqa: E402
from tinyitop.layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d,  # noqa: E402
                             Module, Parameter, ReLU, Sequential)
from tinyitop.losses import SoftmaxCrossEntropy  # noqa: E402
from tinyitop.models import mlp, mlp_cifar, resnet18, resnet34, resnet50, sparsify, vgg16  # noqa: E402
from tinyitop.optim import SGD, MultiStepLR  # noqa: E402
from tinyitop.sparse import SparseConv2d, SparseLinear  # noqa: E402
from tinyitop.topology import TopologyUpdater, prune_rate_at  # noqa: E402

__version__ = "0.1.0"
