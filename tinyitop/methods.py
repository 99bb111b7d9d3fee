"""Method set-up: from a Config, everything the training loop needs, whatever the method.

dense and static need only a model; SET and RigL (ITOP: Liu et al. 2021) add a topology updater
that prunes and regrows every Delta T iterations; SNIP (Lee et al. 2019) prunes once at
initialisation from one batch's gradients, LTH (Frankle & Carbin 2019) trains a dense twin first
and rewinds its largest weights, GMP (Zhu & Gupta 2017) prunes gradually during training
(tinyitop/baselines.py). The loop in train.py treats them all alike.
"""
import dataclasses
import os

import numpy as np

from tinyitop import backend as B
from tinyitop import checkpoint
from tinyitop.baselines import GradualPruner, magnitude_masks, snip_masks
from tinyitop.config import EXPLORING, GMP_END, GMP_START
from tinyitop.data import batches
from tinyitop.explore import Exploration
from tinyitop.flops import FlopCounter
from tinyitop.losses import SoftmaxCrossEntropy
from tinyitop.models import MODELS, mlp, skip_input_gradient, sparsify
from tinyitop.optim import SGD, MultiStepLR
from tinyitop.topology import TopologyUpdater, sparse_layers


@dataclasses.dataclass
class Setup:
    """What the loop works with: the network, its loss and optimizer, the topology updater and the
    explored sets (R_s), GMP's pruner (None otherwise), the FLOP counter and the schedule."""
    model: object
    loss_fn: object
    optimizer: object
    updater: object
    exploration: object
    pruner: object
    flops: object
    lr_at: object
    steps_per_epoch: int
    total_steps: int

    def count_flops(self, batch_size):
        """Training FLOPs of this step (a RigL update step also pays for its dense gradients)."""
        self.flops.step(batch_size, [n for n, l in self.updater.layers.items() if l.keep_dense_grad])

    def after_step(self, step, topology_rate):
        """GMP prunes on its own schedule; the FLOP counter follows any change of the masks."""
        pruned = self.pruner is not None and self.pruner.maybe_prune(step)
        if pruned or topology_rate is not None:
            self.flops.refresh()


def set_up(config, data, train_x, train_y, log):
    """The model for config.method, and everything around it (see Setup)."""
    model = build_model(config, data, train_x, train_y, log)
    skip_input_gradient(model)                 # nothing uses dL/d(images)
    B.seed(config.seed + 1)   # growth draws do not depend on how many draws building the model took
    optimizer = SGD(model.named_parameters(), lr=config.lr, momentum=config.momentum,
                    nesterov=config.momentum > 0, weight_decay=config.weight_decay)
    exploration = Exploration(sparse_layers(model))
    steps_per_epoch = config.steps_per_epoch(len(train_x))
    total_steps = steps_per_epoch * config.total_epochs
    stop_step = None if config.stop_exploration_epoch is None else config.stop_exploration_epoch * steps_per_epoch
    updater = TopologyUpdater(model, optimizer, exploration, method=EXPLORING.get(config.method, "static"),
                              growth=config.growth, update_interval=config.update_interval,
                              prune_rate=config.prune_rate, total_steps=total_steps,
                              stop_exploration_step=stop_step)
    pruner = None
    if config.method == "gmp":
        pruner = GradualPruner(model, optimizer, config.sparsity, config.init, int(GMP_START * total_steps),
                               int(GMP_END * total_steps), config.update_interval)
    return Setup(model, SoftmaxCrossEntropy(), optimizer, updater, exploration, pruner,
                 FlopCounter(model, data.image_shape), MultiStepLR(config.lr, config.epochs, config.multiplier),
                 steps_per_epoch, total_steps)


def dense_model(config, data):
    if config.model == "mlp":
        return mlp(data.in_features, config.hidden, data.num_classes)
    if tuple(data.image_shape) != (3, 32, 32):
        raise ValueError(f"{config.model} expects 3x32x32 images; {data.name} has {tuple(data.image_shape)}")
    return MODELS[config.model](data.num_classes, width=config.width)


def build_model(config, data, train_x=None, train_y=None, log=print):
    """The network for this config and data set: dense, sparse from scratch, or pruned by a baseline."""
    if config.method == "dense":
        return dense_model(config, data)
    if config.method in ("static", "set", "rigl"):
        if config.model == "mlp":
            return mlp(data.in_features, config.hidden, data.num_classes, config.sparsity, config.init,
                       config.dense_layers, config.fan_in_scaling)
        return sparsify(dense_model(config, data), config.sparsity, config.init, config.dense_layers,
                        config.fan_in_scaling)
    if config.method == "gmp":     # starts dense (CSR at density 1), pruned during training
        return sparsify(dense_model(config, data), 0.0, "uniform", config.dense_layers)
    if config.method in ("snip", "snip-set"):
        model = dense_model(config, data)
        pick = np.random.default_rng(config.seed).choice(len(train_x), min(config.batch_size, len(train_x)),
                                                         replace=False)
        images, labels = next(batches(train_x[pick], train_y[pick], len(pick), data.mean, data.std))
        masks = snip_masks(model, images, labels, 1 - config.sparsity, config.dense_layers)
        return sparsify(model, config.sparsity, dense_layers=config.dense_layers, masks=masks)
    return lottery_ticket(config, data, log)


LOTTERY_TICKET = ("lth", "lth-set")       # the methods that start from a trained dense twin's ticket


def dense_twin(config):
    """LTH's step 1, the dense twin: a run of its own in OUT/dense with the same settings, which
    train.py trains first (resume=True: continued from its checkpoint, or started clean)."""
    return dataclasses.replace(config, method="dense", growth=None, out=os.path.join(config.out, "dense"),
                               resume=True)


def lottery_ticket(config, data, log):
    """LTH's step 2: keep the trained dense twin's largest |w| globally, rewind to its initial weights."""
    dense_dir = dense_twin(config).out
    trained = dense_model(config, data)
    checkpoint.load(os.path.join(dense_dir, "checkpoint.npz"), trained, SGD(trained.named_parameters()), None)
    masks = magnitude_masks(trained, 1 - config.sparsity, config.dense_layers)
    B.seed(config.seed)
    model = dense_model(config, data)
    checkpoint.load_parameters(os.path.join(dense_dir, "init.npz"), model)     # rewind to initialisation
    log(f"LTH step 2: retraining the ticket from the initial weights of {dense_dir}")
    return sparsify(model, config.sparsity, dense_layers=config.dense_layers, masks=masks)
