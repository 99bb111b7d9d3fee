"""--resume: refuse a checkpoint made with other settings or data, else restore the loop's state."""
from tinyitop import backend as B
from tinyitop import checkpoint
from tinyitop.config import changed_settings


def check_resumable(folder, config, data_hash, steps_per_epoch):
    """Before any work: the checkpoint's settings, data and loop state must be this run's (one line if not)."""
    meta = checkpoint.read_meta(folder.checkpoint)
    changed = [f"{k} ({old} -> {new})" for k, old, new in changed_settings(meta["config"], config)]
    if changed:
        raise ValueError(f"--resume: {folder.checkpoint} was made with other settings: {', '.join(changed)}. "
                         f"Resume with the same settings, or start again with --overwrite")
    if meta.get("data_fingerprint") not in (None, data_hash):     # None: written before fingerprints
        raise ValueError(f"--resume: the data set {config.dataset} is not the one {folder.checkpoint} was trained "
                         f"on (content hash {meta['data_fingerprint']} then, {data_hash} now). Resume with the "
                         "same data, or start again with --overwrite")
    epoch, step = meta["state"]["epoch"], meta["state"]["step"]
    if epoch > config.total_epochs or step != epoch * steps_per_epoch:
        raise ValueError(f"--resume: {folder.checkpoint} says it is after epoch {epoch} (iteration {step}), which "
                         f"this run ({config.total_epochs} epochs of {steps_per_epoch} iterations) cannot reach: it "
                         "is damaged or not this run's. Start again with --overwrite (or another --out)")


def restore(folder, setup, data_rng, metrics, updates, log):
    """Restore model, optimizer, explored sets, FLOP counts and random generators from the
    checkpoint; drop log rows the checkpoint does not hold. Returns the loop's state."""
    meta = checkpoint.load(folder.checkpoint, setup.model, setup.optimizer, setup.exploration)
    state = meta["state"]
    B.set_rng_state(meta["backend_rng"])
    setup.flops.refresh()
    setup.flops.train_flops, setup.flops.dense_train_flops = state["train_flops"], state["dense_train_flops"]
    data_rng.bit_generator.state = meta["data_rng"]
    # Both logs are read and checked before either is rewritten: a refusal leaves them as they were.
    epochs = [row for row in metrics.read(drop_torn_last=True, log=log) if row["epoch"] <= state["epoch"]]
    steps = [row for row in updates.read(drop_torn_last=True, log=log) if row["iteration"] <= state["step"]]
    logged = [row["epoch"] for row in epochs]
    if logged != list(range(1, state["epoch"] + 1)):     # every epoch the checkpoint holds, once, in order
        raise ValueError(f"--resume: {metrics.path} holds epochs {_ranges(logged)} but {folder.checkpoint} is "
                         f"after epoch {state['epoch']}: the log has lost or repeated rows, so the run's record "
                         "would be wrong. Start again with --overwrite (or another --out)")
    metrics.rewrite(epochs)
    updates.rewrite(steps)
    log(f"resumed from {folder.checkpoint} after epoch {state['epoch']} (iteration {state['step']})")
    return state


def _ranges(epochs):
    return "none" if not epochs else ", ".join(str(e) for e in epochs[:12]) + (" ..." if len(epochs) > 12 else "")


def save(folder, config, setup, state, data_hash, data_rng):
    """The atomic checkpoint after an epoch: everything `restore` needs to continue bit-identically."""
    folder.claim("checkpoint.npz")
    checkpoint.save(folder.checkpoint, setup.model, setup.optimizer, setup.exploration,
                    {"config": config.to_json(), "data_fingerprint": data_hash, "state": state,
                     "backend_rng": B.rng_state(), "data_rng": data_rng.bit_generator.state})
