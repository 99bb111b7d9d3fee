"""Checkpoints without pickle: one .npz written atomically (temporary file, fsync, rename).

It holds everything needed to continue a run exactly: weights (sparse ones as positions + values),
BN statistics, optimizer state, explored sets, random generator states and the position in training.
"""
import json
import zipfile

import numpy as np

from tinyitop import backend as B
from tinyitop.atomic import atomic_write, parse_json
from tinyitop.sparse import SparseWeight


class CheckpointError(ValueError):
    """A checkpoint file cannot be read: truncated, damaged, or not one of ours."""


def save(path, model, optimizer, exploration, meta):
    """Write the training state to `path` atomically: a crash never leaves a half-written file."""
    arrays = {}
    for name, param in model.named_parameters():
        if isinstance(param, SparseWeight):
            arrays[f"sparse/{name}/positions"] = B.to_host(param.flat_positions())
            arrays[f"sparse/{name}/values"] = B.to_host(param.data)
        else:
            arrays[f"param/{name}"] = B.to_host(param.data)
        arrays[f"velocity/{name}"] = B.to_host(optimizer.velocity[name])
    for name, module, key in model.named_buffers():
        arrays[f"buffer/{name}"] = B.to_host(getattr(module, key))
    if exploration is not None:
        for name, explored in exploration.sets.items():
            arrays[f"explored/{name}/positions"] = B.to_host(explored.positions)
            arrays[f"explored/{name}/reliable"] = B.to_host(explored.reliable)
            arrays[f"explored/{name}/pending"] = B.to_host(explored.pending)
    arrays["meta"] = np.array(json.dumps(meta))
    _atomic_savez(path, arrays)


def _atomic_savez(path, arrays):
    atomic_write(path, lambda f: np.savez(f, **arrays))


# What reading a damaged .npz raises: truncated, empty, random bytes, a key or shape that is not ours.
DAMAGED = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


def _detail(path, err):
    """Our own message where it names the file (a shape or position check), else the error's kind."""
    return str(err) if isinstance(err, ValueError) and str(path) in str(err) else type(err).__name__


def load(path, model, optimizer, exploration):
    """Restore a state written by `save` into freshly built objects; returns the meta dict."""
    try:
        return _restore(path, model, optimizer, exploration)
    except DAMAGED as err:
        raise CheckpointError(f"cannot resume from {path}: it is damaged (truncated, empty, not an .npz), was "
                              f"altered, or was not written for this model ({_detail(path, err)}). Move it away and "
                              "start again with --overwrite") from None


def read_meta(path):
    """The settings and loop state a checkpoint was written with (the dict given to `save`)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = parse_json(str(archive["meta"]), path)
    except DAMAGED as err:
        raise CheckpointError(f"cannot resume from {path}: it is damaged (truncated, empty, not an .npz) "
                              f"({type(err).__name__}). Move it away and start again with --overwrite") from None
    state = meta.get("state") if isinstance(meta, dict) else None
    if not isinstance(state, dict) or not isinstance(meta.get("config"), dict) or not all(
            isinstance(state.get(k), int) and state[k] >= 0 for k in ("epoch", "step")):
        raise CheckpointError(f"cannot resume from {path}: its settings or loop state are missing or invalid "
                              "(config, epoch, step). Move it away and start again with --overwrite")
    bad = [k for k, kinds in STATE_FIELDS.items() if k not in state or isinstance(state[k], bool)
           or not isinstance(state[k], kinds)] + [k for k in ("backend_rng", "data_rng") if not _is_rng_state(meta.get(k))]
    if not bad and (state["best_epoch"] is None) != (state["best_test_acc"] is None):   # chosen together
        bad = ["best_epoch", "best_test_acc"]
    if bad:
        raise CheckpointError(f"cannot resume from {path}: its loop state is damaged ({', '.join(bad)} missing or "
                              "invalid). Move it away and start again with --overwrite")
    return meta


# The loop state a checkpoint holds besides epoch and step (train.py's state), and its JSON types.
STATE_FIELDS = {"best_val_acc": (int, float), "best_epoch": (int, type(None)), "best_test_acc": (int, float, type(None)),
                "train_flops": (int, float), "dense_train_flops": (int, float)}


def _is_rng_state(state):
    """Whether `state` is a random generator's state that can be restored (a PCG64's, as saved)."""
    try:
        np.random.PCG64().state = state
    except (TypeError, ValueError, KeyError, OverflowError):
        return False
    return True


def _sorted_positions(path, what, positions, numel):
    """Positions must be integers, strictly increasing (sorted, unique) and inside the layer."""
    if (positions.ndim != 1 or positions.dtype.kind not in "iu"
            or (positions.size and (positions[0] < 0 or positions[-1] >= numel or np.any(np.diff(positions) <= 0)))):
        raise ValueError(f"{what} in {path} are not sorted, unique positions inside the layer (0..{numel - 1})")


def _checked_sparse(path, archive, name, param, exploration):
    """A sparse layer's arrays from the archive, refused unless they describe a valid state."""
    positions, values = archive[f"sparse/{name}/positions"], archive[f"sparse/{name}/values"]
    _sorted_positions(path, f"active positions of {name}", positions, param.numel)
    if values.shape != positions.shape:
        raise ValueError(f"{name} in {path} has {values.size} values for {positions.size} positions")
    if values.dtype.kind != "f":
        raise ValueError(f"the values of {name} in {path} are {values.dtype}, not real numbers: the checkpoint is "
                         "damaged or another program's")
    layer = name.rsplit(".", 1)[0]
    if exploration is not None and layer in exploration.sets:
        explored = archive[f"explored/{layer}/positions"]
        _sorted_positions(path, f"explored positions of {layer}", explored, param.numel)
        if not np.isin(positions, explored).all():
            raise ValueError(f"the explored set of {layer} in {path} misses some of its active positions")
        pending = archive[f"explored/{layer}/pending"]         # grown at the last update: explored, unique
        if (pending.ndim != 1 or pending.dtype.kind not in "iu" or np.unique(pending).size != pending.size
                or not np.isin(pending, explored).all()):
            raise ValueError(f"the last update's grown positions of {layer} in {path} are not unique explored "
                             "positions: the checkpoint is damaged")
    return positions, values


def _shaped(path, archive, key, shape, dtype):
    """archive[key], refused in one line unless it has the shape and dtype this model needs."""
    array = archive[key]
    if array.shape != tuple(shape) or array.dtype != dtype:
        raise ValueError(f"{key} in {path} is {array.dtype} {array.shape}, but this model needs {dtype} "
                         f"{tuple(shape)}: the checkpoint is damaged or another model's")
    return array


def _restore(path, model, optimizer, exploration):
    with np.load(path, allow_pickle=False) as archive:
        for name, param in model.named_parameters():
            if isinstance(param, SparseWeight):
                positions, values = _checked_sparse(path, archive, name, param, exploration)
                param.set_topology(B.to_device(positions), B.to_device(values.astype(param.dtype, copy=False)))
            else:
                param.data = B.to_device(_shaped(path, archive, f"param/{name}", param.shape, param.dtype))
            optimizer.velocity[name] = B.to_device(_shaped(path, archive, f"velocity/{name}", param.data.shape,
                                                           param.dtype))
        for name, module, key in model.named_buffers():
            current = getattr(module, key)
            setattr(module, key, B.to_device(_shaped(path, archive, f"buffer/{name}", current.shape, current.dtype)))
        if exploration is not None:
            for name, explored in exploration.sets.items():
                explored.positions = B.to_device(archive[f"explored/{name}/positions"])
                explored.reliable = B.to_device(_shaped(path, archive, f"explored/{name}/reliable",
                                                        explored.positions.shape, np.dtype(bool)))
                explored.pending = B.to_device(archive[f"explored/{name}/pending"])
        return parse_json(str(archive["meta"]), path)


def save_parameters(path, model):
    """Dense parameter values only (LTH keeps a model's initial weights to rewind to)."""
    _atomic_savez(path, {name: B.to_host(param.data) for name, param in model.named_parameters()})


def load_parameters(path, model):
    """Parameter values written by save_parameters, each checked against the model's shape and dtype."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            for name, param in model.named_parameters():
                param.data = B.to_device(_shaped(path, archive, name, param.data.shape, param.dtype))
    except DAMAGED as err:
        raise CheckpointError(f"cannot read {path}: it is damaged (truncated, empty, not an .npz) or was not "
                              f"written for this model ({_detail(path, err)}). Move it away and start again with "
                              "--overwrite") from None
