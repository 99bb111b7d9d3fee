"""tinyitop: In-Time Over-Parameterization (Liu et al., ICML 2021) with truly sparse NumPy/CuPy layers."""
import os
import sys

# CPU aside (threads.py): after each matrix product OpenBLAS's idle threads spin for ~2^28 cycles,
# holding the core that tinyitop's own threads want next; 2^4 lets them sleep at once. Without it,
# splitting the passes between products over two cores gained nothing; with it the narrow conv nets'
# step is ~1.3x faster (docs/SPEED.md). OpenBLAS reads it when NumPy loads, so it takes effect when
# tinyitop is imported before NumPy (the command line, the demos); a value already set is kept.
BLAS_SPINS = "numpy" in sys.modules and "OPENBLAS_THREAD_TIMEOUT" not in os.environ   # too late: said in the log
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from tinyitop import backend
from tinyitop.blocks import BasicBlock, Bottleneck
from tinyitop.layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d,
                             Module, Parameter, ReLU, Sequential)
from tinyitop.losses import SoftmaxCrossEntropy
from tinyitop.models import mlp, mlp_cifar, resnet18, resnet34, resnet50, vgg16
from tinyitop.optim import SGD, CosineLR, MultiStepLR

__version__ = "0.1.0"
from tinyitop.explore import Exploration
from tinyitop.init import layer_densities
from tinyitop.models import sparsify
from tinyitop.sparse import SparseConv2d, SparseLinear
from tinyitop.topology import TopologyUpdater, prune_rate_at
