"""The training loop of dynamic sparse training, as a reader would draw it:

    batch -> forward -> loss -> backward -> optimizer step -> topology update every Delta T
          -> explored sets (R_s) -> evaluation and metrics each epoch -> atomic checkpoint

`train_epoch` is that loop. Around it: the method's set-up (tinyitop/methods.py: dense, static,
SET, RigL and the baselines), the settings and memory check (config.py), resume (resume.py) and what
is logged (report.py). `train(Config(...))` runs one experiment and returns its summary.
"""
import dataclasses
import os
import time

import numpy as np

from tinyitop import backend as B
from tinyitop import checkpoint, resume, threads
from tinyitop.config import EXPLORING, Config, check_memory  # noqa: F401  (Config: callers import it from here)
from tinyitop.data import absent_classes, batches, fingerprint, load, split_validation
from tinyitop.explore import Exploration
from tinyitop.losses import accuracy_count
from tinyitop.methods import LOTTERY_TICKET, build_model, dense_twin, set_up  # noqa: F401  (build_model: for callers of train.py)
from tinyitop.metrics import EPOCH_FIELDS, UPDATE_FIELDS, JsonLines, format_epoch, format_rs, progress
from tinyitop.report import (TrainingDiverged, check_finite, epoch_row, evaluate,  # noqa: F401
                             summarise, update_row)
from tinyitop.rundir import RunFolder

FINITE_CHECK_EVERY = 50     # iterations between host checks that the loss is still finite


def train_epoch(setup, batch_iter, step, epoch, updates, check_loss):
    """One epoch of dynamic sparse training. Returns (step, loss sum, correct count, last prune rate)."""
    model, loss_fn, optimizer, updater = setup.model, setup.loss_fn, setup.optimizer, setup.updater
    loss_sum, correct, last_rate = 0.0, 0, None       # device accumulators: no sync per step
    for images, labels in batch_iter:
        step += 1
        updater.prepare(step)              # RigL on an update step: keep the full gradient, to grow by
        logits = model.forward(images)                          # forward
        loss = loss_fn.forward(logits, labels)                  # loss
        model.backward(loss_fn.backward())                      # backward
        optimizer.step()                                        # optimizer step
        setup.count_flops(labels.shape[0])   # before the update: a RigL step pays for its dense gradient
        rate = updater.maybe_update(step)    # every Delta T: prune the smallest |w|, grow as many (topology.py)
        if rate is not None:                 # the explored sets take in the new masks: R_s grows (explore.py)
            setup.exploration.record_updates(updater.last_update)
            last_rate = rate
            updates.append(update_row(setup, step, epoch, rate))
        setup.after_step(step, rate)         # the method's own bookkeeping: GMP's pruning, FLOP counts
        loss_sum = loss_sum + loss * labels.shape[0]
        correct = correct + accuracy_count(logits, labels)
        if step % FINITE_CHECK_EVERY == 0:
            check_loss(B.scalar(loss_sum))                      # sync point every 50 iterations
    return step, loss_sum, correct, last_rate


@dataclasses.dataclass
class Run:
    """What `train` returns: the summary, and the trained objects for plots or further use."""
    summary: dict
    model: object
    exploration: Exploration
    data: object


INTERRUPTED = 130      # the shell's status for a program stopped by Ctrl-C (128 + SIGINT): a run's, a sweep's


class TrainingInterrupted(Exception):
    """Ctrl-C during training: `checkpoint_epoch` epochs are safe in `checkpoint` (None: none yet)."""

    def __init__(self, checkpoint, checkpoint_epoch):
        super().__init__(f"interrupted; the last checkpoint is {checkpoint} (after epoch {checkpoint_epoch})"
                         if checkpoint_epoch else "interrupted before the first checkpoint")
        self.checkpoint, self.checkpoint_epoch = checkpoint, checkpoint_epoch


def train(config, log=print, on_epoch_end=None):
    """Run one experiment; returns a Run (its summary is also written to OUT/summary.json)."""
    config.validate()
    data = load(config.dataset, config.data_dir)       # data and memory checked before OUT is touched:
    splits = _split(config, data)                      # a refusal leaves no folder behind
    check_memory(config, data)
    folder = RunFolder(config.out)
    try:
        resuming = folder.open(config.resume, config.overwrite, log)
        return _train(config, folder, resuming, (data, *splits), log, on_epoch_end)
    finally:
        folder.close()        # releases the lock on OUT


def _train(config, folder, resuming, data, log, on_epoch_end):
    """Method set-up and resume, then the epochs: train_epoch, evaluation, logs, checkpoint."""
    run = _start(config, folder, resuming, data, log)
    try:
        for epoch in range(run.state["epoch"], config.total_epochs):
            run.setup.optimizer.lr = run.setup.lr_at(epoch)
            started = time.perf_counter()
            batch_iter = progress(batches(*run.train, config.batch_size, run.data.mean, run.data.std, run.data_rng,
                                          run.augment, config.pad_mode),
                                  run.setup.steps_per_epoch, config.progress, f"epoch {epoch + 1}")
            step, loss_sum, correct, last_rate = train_epoch(
                run.setup, batch_iter, run.state["step"], epoch, run.updates,
                lambda loss: check_finite(loss, epoch, run.state, folder))
            _end_epoch(config, folder, run, epoch, step, (loss_sum, correct, last_rate), started, log)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
    except KeyboardInterrupt:
        raise TrainingInterrupted(folder.checkpoint, run.state["epoch"]) from None
    folder.claim("summary.json")
    summary = summarise(config, run.state, run.metrics, run.state["step"], log)
    return Run(summary, run.setup.model, run.setup.exploration, run.data)


@dataclasses.dataclass
class _Session:
    """What the epochs of one run share: data, the method's set-up, logs, and the saved state."""
    data: object
    train: tuple            # (images, labels) trained on
    val: tuple              # (images, labels) held out, maybe empty
    data_hash: str
    setup: object
    augment: bool
    data_rng: object
    metrics: JsonLines
    updates: JsonLines
    state: dict             # epoch, step, best validation, FLOPs: what the last checkpoint holds


def _start(config, folder, resuming, data, log):
    """Set up the method on the loaded data (data, train split, validation split), and restore the
    checkpoint when resuming."""
    B.seed(config.seed)
    data, train_set, val_set = data
    data_hash = fingerprint(data)
    if resuming:
        resume.check_resumable(folder, config, data_hash, config.steps_per_epoch(len(train_set[0])))
    if config.method in LOTTERY_TICKET:
        train_dense_twin(config, log)
    setup = set_up(config, data, *train_set, log)
    if config.method == "dense" and not resuming:
        folder.claim("init.npz")
        checkpoint.save_parameters(folder.path("init.npz"), setup.model)   # for LTH's rewind
    augment = data.augment if config.augment is None else config.augment
    data_rng = np.random.default_rng(config.seed)
    metrics, updates = (JsonLines(folder.path(name), lambda name=name: folder.claim(name), fields)
                        for name, fields in (("metrics.jsonl", EPOCH_FIELDS), ("updates.jsonl", UPDATE_FIELDS)))
    state = {"epoch": 0, "step": 0, "best_val_acc": -1.0, "best_epoch": None, "best_test_acc": None,
             "train_flops": 0.0, "dense_train_flops": 0.0}
    if resuming:
        state = resume.restore(folder, setup, data_rng, metrics, updates, log)
    _log_start(config, data, setup, len(train_set[0]), len(val_set[0]), augment, log)
    return _Session(data, train_set, val_set, data_hash, setup, augment, data_rng, metrics, updates, state)


def _end_epoch(config, folder, run, epoch, step, sums, started, log):
    """Evaluate, log the epoch's row, and checkpoint: run.state moves on only once the checkpoint holds it."""
    setup, n_train, (loss_sum, correct, last_rate) = run.setup, len(run.train[0]), sums
    train_seconds = time.perf_counter() - started               # the epoch without its evaluation
    train_loss, train_acc = B.scalar(loss_sum) / n_train, B.scalar(correct) / n_train  # sync
    check_finite(train_loss, epoch, run.state, folder)
    val = evaluate(setup.model, *run.val, run.data, config.batch_size, config.progress, "validation")
    test = evaluate(setup.model, run.data.test_x, run.data.test_y, run.data, config.batch_size, config.progress, "test")
    for what, (loss, _) in (("validation loss", val), ("test loss", test)):     # an overflow in eval
        check_finite(loss, epoch, run.state, folder, what)                    # mode is no accuracy
    state = dict(run.state)
    final_sparsity = setup.pruner is None or step >= setup.pruner.end_step    # GMP: pruning is over
    if val[1] is not None and val[1] > state["best_val_acc"] and final_sparsity:
        state.update(best_val_acc=val[1], best_epoch=epoch + 1, best_test_acc=test[1])
    row = epoch_row(config, setup, epoch, step, last_rate, (train_loss, train_acc), val, test,
                    train_seconds, time.perf_counter() - started, n_train)
    run.metrics.append(row)
    log(format_epoch(row))
    state.update(epoch=epoch + 1, step=step, train_flops=setup.flops.train_flops,
                 dense_train_flops=setup.flops.dense_train_flops)
    resume.save(folder, config, setup, state, data_hash=run.data_hash, data_rng=run.data_rng)
    run.state = state


def train_dense_twin(config, log):
    """LTH's step 1: train the dense twin (methods.dense_twin), or reuse it once finished."""
    twin = dense_twin(config)
    if not os.path.exists(os.path.join(twin.out, "summary.json")):
        log(f"LTH step 1: training the dense network in {twin.out}")
        train(twin, log)


def _split(config, data):
    """(train, validation) sets: a fixed random val_fraction held out, then --limit-train."""
    (train_x, train_y), (val_x, val_y) = split_validation(data.train_x, data.train_y, config.val_fraction,
                                                          config.seed)
    if config.limit_train is not None:
        train_x, train_y = train_x[:config.limit_train], train_y[:config.limit_train]
    if len(train_x) < 2:
        raise ValueError(f"--val-fraction {config.val_fraction} leaves {len(train_x)} of {len(data.train_x)} "
                         "training images to train on: lower it (or bring more data)")
    return (train_x, train_y), (val_x, val_y)


def _log_start(config, data, setup, n_train, n_val, augment, log):
    log(B.describe())
    note = threads.blas_note()
    if note:
        log(note)
    model_name = config.model + (f" (width {config.width:g})" if config.width != 1.0 else "")
    log(f"{model_name} on {data.name}: {n_train} train / {n_val} val / {len(data.test_x)} test, {data.num_classes} classes, "
        f"method {config.method}, sparsity {config.sparsity if config.method != 'dense' else 0}, "
        f"R_s at start {format_rs(setup.exploration.rs())}")
    absent = absent_classes(data.train_y, data.num_classes)
    if absent:
        log(f"warning: {absent} of {data.num_classes} have no training image: the network cannot learn them")
    # Said on every run: an .npz (even of CIFAR images) gets none unless asked, and it moves results by points.
    log(f"augmentation: {config.pad_mode}-padded random crop + flip" if augment else
        "augmentation: off" + (" (the default for this data set; --augment adds crop + flip)" if config.augment is None else ""))
    hint = max(1, setup.total_steps // 10)         # a Delta T that gives a short run about 10 updates
    if (config.method in EXPLORING or setup.pruner) and config.update_interval > setup.total_steps:
        log(f"warning: Delta T = {config.update_interval} iterations is more than this run's {setup.total_steps}: "
            f"no topology update will happen, so nothing is explored. Lower --update-interval, e.g. to "
            f"{hint} for {(setup.total_steps - 1) // hint} updates")
    first, second = setup.lr_at.milestone_epochs
    if first == second < config.total_epochs:                            # a drop the run reaches
        log(f"note: in {config.total_epochs} epoch(s) the LR's two x0.1 drops (epochs int(E/2) and int(3E/4), the "
            f"reference's schedule) fall on the same epoch: lr x0.01 from epoch {first + 1}")
