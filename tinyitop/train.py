"""The training loop of dynamic sparse training, as a reader would draw it:

    batch -> forward -> loss -> backward -> optimizer step -> topology update every Delta T
          -> explored sets (R_s) -> evaluation and metrics each epoch -> atomic checkpoint

Methods: dense, static (fixed sparse mask), set (Mocanu et al. 2018; ITOP: Liu et al. 2021),
rigl (Evci et al. 2020), and the baselines of `baselines.py`: gmp, snip, snip-set, lth, lth-set.
`train(Config(...))` runs one experiment and returns its summary.
"""
import dataclasses
import math
import os
import time

import numpy as np

from tinyitop import backend as B
from tinyitop import checkpoint
from tinyitop.baselines import GradualPruner, magnitude_masks, snip_masks
from tinyitop.data import DATASETS, PAD_MODES, batches, fingerprint, is_npz, load, split_validation
from tinyitop.explore import Exploration, mask_crop
from tinyitop.flops import FlopCounter
from tinyitop.init import INIT_METHODS
from tinyitop.losses import SoftmaxCrossEntropy, accuracy_count
from tinyitop.metrics import JsonLines, format_epoch, format_rs, peak_rss_mb
from tinyitop.models import MODELS, mlp, skip_input_gradient, sparsify
from tinyitop.optim import SGD, MultiStepLR
from tinyitop.rundir import RunFolder, write_json
from tinyitop.topology import GROWTH_MODES, TopologyUpdater, prune_rate, sparse_layers

METHODS = ("dense", "static", "set", "rigl", "gmp", "snip", "snip-set", "lth", "lth-set")
# Methods that change the topology during training, and the rule they explore by.
EXPLORING = {"set": "set", "rigl": "rigl", "snip-set": "set", "lth-set": "set"}
# GMP prunes from 10% to 60% of training, then fine-tunes (a common choice after Zhu & Gupta 2017).
GMP_START, GMP_END = 0.1, 0.6
MODEL_NAMES = ("mlp",) + tuple(MODELS)
FINITE_CHECK_EVERY = 50     # iterations between host checks that the loss is still finite


@dataclasses.dataclass
class Run:
    """What `train` returns: the summary, and the trained objects for plots or further use."""
    summary: dict
    model: object
    exploration: Exploration
    data: object


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """Ctrl-C during training: `checkpoint_epoch` epochs are safe in `checkpoint` (None: none yet)."""

    def __init__(self, checkpoint, checkpoint_epoch):
        super().__init__(f"interrupted; the last checkpoint is {checkpoint} (after epoch {checkpoint_epoch})"
                         if checkpoint_epoch else "interrupted before the first checkpoint")
        self.checkpoint, self.checkpoint_epoch = checkpoint, checkpoint_epoch


@dataclasses.dataclass
class Config:
    """One experiment. Defaults are the paper's MLP settings on CIFAR-10 (Liu et al. 2021)."""
    model: str = "mlp"
    hidden: tuple = (1024, 512)
    width: float = 1.0              # conv nets: channel counts x width (1.0: the paper's network)
    dataset: str = "cifar10"        # a name from data.DATASETS or the path of the user's .npz
    data_dir: str = None
    augment: bool = None            # crop + flip; None: on for CIFAR-10/100, off otherwise
    pad_mode: str = "reflect"       # the crop's padding: reflect (the reference) or zero
    method: str = "set"
    growth: str = None              # None: random for set, gradient for rigl
    sparsity: float = 0.95
    init: str = "erk"
    dense_layers: tuple = ()
    fan_in_scaling: bool = False
    update_interval: int = 1500     # Delta T, in iterations; not scaled by the multiplier
    prune_rate: float = 0.5         # initial prune rate P of the cosine schedule
    stop_exploration_epoch: int = None
    epochs: int = 200
    multiplier: int = 1             # extended training: epochs and LR milestones x multiplier
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    limit_train: int = None
    val_fraction: float = 0.1       # 0: train on all training images, no best-epoch selection
    out: str = "runs/default"
    resume: bool = False
    overwrite: bool = False         # a fresh run may replace the run already in `out`
    progress: bool = True

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        self.dense_layers = tuple(self.dense_layers)
        if self.growth is None and self.method in EXPLORING:
            self.growth = "gradient" if self.method == "rigl" else "random"

    @property
    def total_epochs(self):
        return self.epochs * self.multiplier

    def validate(self):
        """Reject bad options before any work, saying why."""
        problems = []
        if self.model not in MODEL_NAMES:
            problems.append(f"unknown model {self.model!r} (choose from {', '.join(MODEL_NAMES)})")
        if self.dataset not in DATASETS and not is_npz(self.dataset):
            problems.append(f"unknown dataset {self.dataset!r} (choose from {', '.join(DATASETS)} or a PATH.npz)")
        if self.pad_mode not in PAD_MODES:
            problems.append(f"unknown pad mode {self.pad_mode!r} (choose from {', '.join(PAD_MODES)})")
        if self.method not in METHODS:
            problems.append(f"unknown method {self.method!r} (choose from {', '.join(METHODS)})")
        if self.init not in INIT_METHODS:
            problems.append(f"unknown init {self.init!r} (choose from {', '.join(INIT_METHODS)})")
        if not 0 <= self.sparsity < 1:
            problems.append(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.method != "dense" and self.method in METHODS and self.sparsity == 0:
            problems.append(f"method {self.method!r} needs sparsity > 0 (use --method dense)")
        if self.growth is not None:
            if self.growth not in GROWTH_MODES:
                problems.append(f"unknown growth {self.growth!r} (choose from {', '.join(GROWTH_MODES)})")
            elif self.method not in EXPLORING:
                problems.append(f"method {self.method!r} does not grow connections; drop --growth")
            elif self.method != "rigl" and self.growth == "gradient":
                problems.append(f"method {self.method!r} grows by 'random' or 'unexplored'; "
                                "gradient growth is --method rigl")
            elif self.method == "rigl" and self.growth != "gradient":
                problems.append("method 'rigl' grows by 'gradient'")
        if self.update_interval < 1:
            problems.append(f"update interval must be >= 1 iteration, got {self.update_interval}")
        if not 0 < self.prune_rate < 1:
            problems.append(f"prune rate must be in (0, 1), got {self.prune_rate}")
        for name in ("epochs", "multiplier", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        numbers = {k: getattr(self, k) for k in ("lr", "momentum", "weight_decay", "sparsity", "prune_rate")}
        not_finite = [f"{k} = {v}" for k, v in numbers.items() if not math.isfinite(v)]
        if not_finite:
            problems.append(f"settings must be finite numbers: {', '.join(not_finite)}")
        elif self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            problems.append("need lr > 0, weight decay >= 0 and momentum in [0, 1)")
        if self.limit_train is not None and self.limit_train < 2:
            problems.append(f"limit_train must be >= 2, got {self.limit_train}")
        if not 0 <= self.val_fraction < 1:
            problems.append(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.stop_exploration_epoch is not None and self.stop_exploration_epoch < 0:
            problems.append(f"stop_exploration_epoch must be >= 0, got {self.stop_exploration_epoch}")
        if not (isinstance(self.width, (int, float)) and math.isfinite(self.width) and self.width > 0):
            problems.append(f"width must be a positive number, got {self.width!r}")
        elif self.model == "mlp" and self.width != 1.0:
            problems.append("width scales conv nets' channels; an mlp's sizes are --hidden")
        if self.model == "mlp" and not self.hidden:
            problems.append("mlp needs at least one hidden layer size")
        if any(h < 1 for h in self.hidden):
            problems.append(f"hidden layer sizes must be >= 1, got {list(self.hidden)}")
        if problems:
            raise ValueError("bad options:\n  - " + "\n  - ".join(problems))

    def to_json(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# --resume continues the same experiment: every setting must match the checkpoint's, except these,
# which change where and how a run is shown, not what it computes.
RESUME_FREE = ("data_dir", "out", "resume", "overwrite", "progress")


def _dense_model(config, data):
    if config.model == "mlp":
        return mlp(data.in_features, config.hidden, data.num_classes)
    if tuple(data.image_shape) != (3, 32, 32):
        raise ValueError(f"{config.model} expects 3x32x32 images; {data.name} has {tuple(data.image_shape)}")
    return MODELS[config.model](data.num_classes, width=config.width)


def _lottery_ticket(config, data, log):
    """LTH: train the dense twin (or reuse a finished one), keep its largest |w| globally, rewind."""
    dense_dir = os.path.join(config.out, "dense")
    # resume=True: continue the twin from its checkpoint, or start it clean if it has none yet.
    dense_config = dataclasses.replace(config, method="dense", growth=None, out=dense_dir, resume=True)
    if not os.path.exists(os.path.join(dense_dir, "summary.json")):
        log(f"LTH step 1: training the dense network in {dense_dir}")
        train(dense_config, log)
    trained = _dense_model(config, data)
    checkpoint.load(os.path.join(dense_dir, "checkpoint.npz"), trained, SGD(trained.named_parameters()), None)
    masks = magnitude_masks(trained, 1 - config.sparsity, config.dense_layers)
    B.seed(config.seed)
    model = _dense_model(config, data)
    checkpoint.load_parameters(os.path.join(dense_dir, "init.npz"), model)     # rewind to initialisation
    log(f"LTH step 2: retraining the ticket from the initial weights of {dense_dir}")
    return sparsify(model, config.sparsity, dense_layers=config.dense_layers, masks=masks)


def build_model(config, data, train_x=None, train_y=None, log=print):
    """The network for this config and data set: dense, sparse from scratch, or pruned by a baseline."""
    if config.method == "dense":
        return _dense_model(config, data)
    if config.method in ("static", "set", "rigl"):
        if config.model == "mlp":
            return mlp(data.in_features, config.hidden, data.num_classes, config.sparsity, config.init,
                       config.dense_layers, config.fan_in_scaling)
        return sparsify(_dense_model(config, data), config.sparsity, config.init, config.dense_layers,
                        config.fan_in_scaling)
    if config.method == "gmp":     # starts dense (CSR at density 1), pruned during training
        return sparsify(_dense_model(config, data), 0.0, "uniform", config.dense_layers)
    if config.method in ("snip", "snip-set"):
        model = _dense_model(config, data)
        pick = np.random.default_rng(config.seed).choice(len(train_x), min(config.batch_size, len(train_x)),
                                                         replace=False)
        images, labels = next(batches(train_x[pick], train_y[pick], len(pick), data.mean, data.std))
        masks = snip_masks(model, images, labels, 1 - config.sparsity, config.dense_layers)
        return sparsify(model, config.sparsity, dense_layers=config.dense_layers, masks=masks)
    return _lottery_ticket(config, data, log)


def evaluate(model, x, y, data, batch_size):
    """Mean loss and accuracy on (x, y) in eval mode; one host sync at the end."""
    if len(x) == 0:
        return None, None
    model.eval()
    loss_fn = SoftmaxCrossEntropy()
    loss_sum, correct = 0.0, 0
    for images, labels in batches(x, y, batch_size, data.mean, data.std):
        logits = model.forward(images)
        loss_sum = loss_sum + loss_fn.forward(logits, labels) * labels.shape[0]
        correct = correct + accuracy_count(logits, labels)
    model.train()
    return B.scalar(loss_sum) / len(x), B.scalar(correct) / len(x)   # sync point


def layer_stats(model, exploration):
    """Per sparse layer: nnz, density, R_s and reliable R_s (plain numbers for the logs)."""
    layers = sparse_layers(model)
    return {"nnz_per_layer": {n: layer.weight_param.nnz for n, layer in layers.items()},
            "density_per_layer": {n: layer.weight_param.density for n, layer in layers.items()},
            "rs_per_layer": exploration.rs_per_layer(),
            "rs_reliable_per_layer": exploration.rs_reliable_per_layer()}


def _progress(iterable, total, enabled, description):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=description, leave=False, unit="batch")


def _check_finite(loss, epoch, state, folder):
    if not math.isfinite(loss):
        kept = (f"the last good checkpoint, {folder.checkpoint} (after epoch {state['epoch']}), is kept"
                if state["epoch"] else "no checkpoint was written yet")
        raise TrainingDiverged(f"loss became {loss} in epoch {epoch + 1}: training diverged; {kept}. "
                               f"Start again with a lower --lr and --overwrite (or another --out): "
                               f"--resume continues only the same settings")


def changed_settings(saved, config):
    """[(setting, saved value, value now)] for every setting that changes the result (not
    RESUME_FREE) and differs between a saved run's config (JSON) and `config`."""
    now = config.to_json()
    defaults = Config().to_json()      # a setting added later: older runs had its default
    return [(k, saved.get(k, defaults[k]), v) for k, v in now.items()
            if k not in RESUME_FREE and saved.get(k, defaults[k]) != v]


def _available_bytes():
    """Memory this machine can still give (MemAvailable), or None where /proc/meminfo is absent."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(config, data):
    """Refuse, before allocating, a model whose weights and optimizer state alone exceed the memory
    this machine has (e.g. --hidden 2000000000): one line saying how much it would need."""
    if config.model == "mlp":
        sizes = [data.in_features, *config.hidden, data.num_classes]
        shapes = [(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1)]
    else:                                       # conv nets: fixed sizes, only the classifier grows
        shapes = [(512 * 4, data.num_classes), (int(11_000_000 * max(config.width, 1) ** 2), 1)]
    dense_numel = sum(a * b for a, b in shapes)
    if config.method in ("dense", "gmp", "snip", "snip-set", "lth", "lth-set"):
        need = dense_numel * 4 * 3                 # weight, gradient, momentum (float32); dense at some point
    else:                                          # sparse from scratch: ~40 bytes per active weight
        need = (1 - config.sparsity) * dense_numel * 40
    available = _available_bytes()
    if available is not None and need > available:
        raise ValueError(f"this model needs about {need / 2 ** 30:.1f} GiB for its weights and optimizer state "
                         f"alone ({dense_numel:,} weights, method {config.method}), more than the "
                         f"{available / 2 ** 30:.1f} GiB this machine has free: use smaller layers or a higher sparsity")


def _check_resumable(folder, config, data_hash):
    """Before any work: the checkpoint's settings and data must be this run's (one line if not)."""
    meta = checkpoint.read_meta(folder.checkpoint)
    changed = [f"{k} ({old} -> {new})" for k, old, new in changed_settings(meta["config"], config)]
    if changed:
        raise ValueError(f"--resume: {folder.checkpoint} was made with other settings: {', '.join(changed)}. "
                         f"Resume with the same settings, or start again with --overwrite")
    if meta.get("data_fingerprint") not in (None, data_hash):     # None: written before fingerprints
        raise ValueError(f"--resume: the data set {config.dataset} is not the one {folder.checkpoint} was trained "
                         f"on (content hash {meta['data_fingerprint']} then, {data_hash} now). Resume with the "
                         "same data, or start again with --overwrite")


def _resume(folder, config, model, optimizer, exploration, flops, data_rng, metrics, updates, log):
    """Restore everything from the checkpoint; returns the loop's state."""
    meta = checkpoint.load(folder.checkpoint, model, optimizer, exploration)
    state = meta["state"]
    B.set_rng_state(meta["backend_rng"])
    flops.refresh()
    flops.train_flops, flops.dense_train_flops = state["train_flops"], state["dense_train_flops"]
    data_rng.bit_generator.state = meta["data_rng"]
    metrics.truncate(lambda row: row["epoch"] <= state["epoch"], log)
    updates.truncate(lambda row: row["iteration"] <= state["step"], log)
    log(f"resumed from {folder.checkpoint} after epoch {state['epoch']} (iteration {state['step']})")
    return state


def _summarise(config, state, metrics, step, log):
    """summary.json (written atomically) from the logged epochs; returns it."""
    rows = metrics.read()
    no_val = state["best_epoch"] is None       # --val-fraction 0: nothing to select an epoch by
    summary = {"best_epoch": state["best_epoch"], "best_val_acc": None if no_val else state["best_val_acc"],
               "test_acc_at_best_val": state["best_test_acc"], "last_test_acc": rows[-1]["test_acc"],
               "best_test_acc": max(r["test_acc"] for r in rows),   # the reference's "best": chosen on test
               "final_rs": rows[-1]["rs"], "final_rs_reliable": rows[-1]["rs_reliable"],
               "final_train_acc": rows[-1]["train_acc"],
               # LTH also paid for training its dense twin: one dense budget on top.
               "train_flops_rel": rows[-1]["train_flops_rel"] + (1.0 if config.method.startswith("lth") else 0.0),
               "test_flops_rel": rows[-1]["test_flops_rel"],
               "epochs": config.total_epochs, "iterations": step, "config": config.to_json()}
    write_json(os.path.join(config.out, "summary.json"), summary)
    if no_val:
        log(f"no validation set: last epoch test acc {summary['last_test_acc']:.4f}; best test acc over epochs "
            f"{summary['best_test_acc']:.4f} (chosen on the test set, optimistic); final R_s {format_rs(summary['final_rs'])}")
    else:
        log(f"best val acc {summary['best_val_acc']:.4f} at epoch {summary['best_epoch']}: "
            f"test acc {summary['test_acc_at_best_val']:.4f}; last epoch test acc {summary['last_test_acc']:.4f}; "
            f"final R_s {format_rs(summary['final_rs'])}")
    return summary


def train(config, log=print, on_epoch_end=None):
    """Run one experiment; returns a Run (its summary is also written to OUT/summary.json)."""
    config.validate()
    folder = RunFolder(config.out)
    try:
        resuming = folder.open(config.resume, config.overwrite, log)
        return _train(config, folder, resuming, log, on_epoch_end)
    finally:
        folder.close()        # releases the lock on OUT


def _train(config, folder, resuming, log, on_epoch_end):
    B.seed(config.seed)
    data = load(config.dataset, config.data_dir, synthetic_shape=(3, 8, 8) if config.model == "mlp" else (3, 32, 32))
    (train_x, train_y), (val_x, val_y) = split_validation(data.train_x, data.train_y, config.val_fraction,
                                                          config.seed)
    if config.limit_train is not None:
        train_x, train_y = train_x[:config.limit_train], train_y[:config.limit_train]
    if len(train_x) < 2:
        raise ValueError(f"--val-fraction {config.val_fraction} leaves {len(train_x)} of {len(data.train_x)} "
                         "training images to train on: lower it (or bring more data)")
    check_memory(config, data)
    data_hash = fingerprint(data)
    if resuming:
        _check_resumable(folder, config, data_hash)
    model = build_model(config, data, train_x, train_y, log)
    skip_input_gradient(model)                 # nothing uses dL/d(images)
    if config.method == "dense" and not resuming:
        checkpoint.save_parameters(folder.path("init.npz"), model)   # for LTH's rewind
    B.seed(config.seed + 1)   # growth draws do not depend on how many draws building the model took
    optimizer = SGD(model.named_parameters(), lr=config.lr, momentum=config.momentum,
                    nesterov=config.momentum > 0, weight_decay=config.weight_decay)
    exploration = Exploration(sparse_layers(model))
    steps_per_epoch = math.ceil(len(train_x) / config.batch_size)
    total_steps = steps_per_epoch * config.total_epochs
    stop_step = None if config.stop_exploration_epoch is None else config.stop_exploration_epoch * steps_per_epoch
    updater = TopologyUpdater(model, optimizer, exploration, method=EXPLORING.get(config.method, "static"),
                              growth=config.growth, update_interval=config.update_interval,
                              initial_prune_rate=config.prune_rate, total_steps=total_steps,
                              stop_exploration_step=stop_step)
    pruner = None
    if config.method == "gmp":
        pruner = GradualPruner(model, optimizer, config.sparsity, config.init, int(GMP_START * total_steps),
                               int(GMP_END * total_steps), config.update_interval)
    flops = FlopCounter(model, data.image_shape)
    lr_at = MultiStepLR(config.lr, config.epochs, config.multiplier)
    augment = data.augment if config.augment is None else config.augment
    data_rng = np.random.default_rng(config.seed)
    metrics, updates = JsonLines(folder.path("metrics.jsonl")), JsonLines(folder.path("updates.jsonl"))
    state = {"epoch": 0, "step": 0, "best_val_acc": -1.0, "best_epoch": None, "best_test_acc": None,
             "train_flops": 0.0, "dense_train_flops": 0.0}
    if resuming:
        state = _resume(folder, config, model, optimizer, exploration, flops, data_rng, metrics, updates, log)

    log(B.describe())
    model_name = config.model + (f" (width {config.width:g})" if config.width != 1.0 else "")
    log(f"{model_name} on {data.name}: {len(train_x)} train / {len(val_x)} val / {len(data.test_x)} test, "
        f"method {config.method}, sparsity {config.sparsity if config.method != 'dense' else 0}, "
        f"R_s at start {format_rs(exploration.rs())}")
    if (config.method in EXPLORING or pruner) and config.update_interval > total_steps:
        log(f"warning: Delta T = {config.update_interval} iterations is more than this run's {total_steps}: "
            f"no topology update will happen, so nothing is explored. Lower --update-interval")

    loss_fn = SoftmaxCrossEntropy()
    step = state["step"]
    try:
        for epoch in range(state["epoch"], config.total_epochs):
            optimizer.lr = lr_at(epoch)
            started = time.perf_counter()
            loss_sum, correct = 0.0, 0     # device accumulators
            last_rate = None
            batch_iter = batches(train_x, train_y, config.batch_size, data.mean, data.std, data_rng, augment,
                                 config.pad_mode)
            for images, labels in _progress(batch_iter, steps_per_epoch, config.progress, f"epoch {epoch + 1}"):
                step += 1
                updater.prepare(step)
                logits = model.forward(images)                          # forward
                loss = loss_fn.forward(logits, labels)                  # loss
                model.backward(loss_fn.backward())                      # backward
                optimizer.step()                                        # optimizer step
                flops.step(labels.shape[0], [n for n, l in updater.layers.items() if l.keep_dense_grad])
                rate = updater.maybe_update(step)                       # topology update every Delta T
                if pruner is not None and pruner.maybe_prune(step):     # GMP: remove weights, never grow
                    flops.refresh()
                if rate is not None:                                    # explored sets grew: log R_s
                    last_rate = rate
                    flops.refresh()
                    first = next(iter(updater.layers))                  # its mask, for mask_evolution.png
                    updates.append({"iteration": step, "epoch": epoch + 1, "prune_rate": rate,
                                    "rs": exploration.rs(), "rs_reliable": exploration.rs_reliable(),
                                    "rs_per_layer": exploration.rs_per_layer(), "crop_layer": first,
                                    **mask_crop(updater.layers[first].weight_param, updater.last_update[first][2])})
                loss_sum = loss_sum + loss * labels.shape[0]
                correct = correct + accuracy_count(logits, labels)
                if step % FINITE_CHECK_EVERY == 0:
                    _check_finite(B.scalar(loss_sum), epoch, state, folder)   # sync point every 50 iterations
            train_loss = B.scalar(loss_sum) / len(train_x)             # sync point: once per epoch
            train_seconds = time.perf_counter() - started               # the epoch without its evaluation
            _check_finite(train_loss, epoch, state, folder)
            train_acc = B.scalar(correct) / len(train_x)
            val_loss, val_acc = evaluate(model, val_x, val_y, data, config.batch_size)
            test_loss, test_acc = evaluate(model, data.test_x, data.test_y, data, config.batch_size)
            seconds = time.perf_counter() - started
            if val_acc is not None and val_acc > state["best_val_acc"]:
                state.update(best_val_acc=val_acc, best_epoch=epoch + 1, best_test_acc=test_acc)
            row = {"epoch": epoch + 1, "iteration": step, "lr": optimizer.lr,
                   "prune_rate": last_rate if last_rate is not None else (
                       prune_rate(step, total_steps, config.prune_rate) if config.method in EXPLORING else 0.0),
                   "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc,
                   "test_loss": test_loss, "test_acc": test_acc, "rs": exploration.rs(),
                   "train_flops_rel": flops.train_relative(), "test_flops_rel": flops.test_relative(),
                   "rs_reliable": exploration.rs_reliable(), **layer_stats(model, exploration),
                   "seconds": seconds, "train_seconds": train_seconds, "samples_per_s": len(train_x) / seconds,
                   "peak_rss_mb": peak_rss_mb()}
            metrics.append(row)
            log(format_epoch(row))
            checkpoint.save(folder.checkpoint, model, optimizer, exploration,
                            {"config": config.to_json(), "data_fingerprint": data_hash,
                             "state": {**state, "epoch": epoch + 1, "step": step, "train_flops": flops.train_flops,
                                       "dense_train_flops": flops.dense_train_flops},
                             "backend_rng": B.rng_state(), "data_rng": data_rng.bit_generator.state})
            state.update(epoch=epoch + 1, step=step, train_flops=flops.train_flops,
                         dense_train_flops=flops.dense_train_flops)     # only once the checkpoint holds it
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
    except KeyboardInterrupt:
        raise TrainingInterrupted(folder.checkpoint, state["epoch"]) from None

    summary = _summarise(config, state, metrics, step, log)
    return Run(summary, model, exploration, data)
