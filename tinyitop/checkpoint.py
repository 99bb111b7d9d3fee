"""Checkpoints without pickle: one .npz written atomically (temporary file, fsync, rename).

It holds everything needed to continue a run exactly: weights (sparse ones as positions + values),
BN statistics, optimizer state, explored sets, random generator states and the position in training.
"""
import json
import zipfile

import numpy as np

from tinyitop import backend as B
from tinyitop.rundir import atomic_write
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


def load(path, model, optimizer, exploration):
    """Restore a state written by `save` into freshly built objects; returns the meta dict."""
    try:
        return _restore(path, model, optimizer, exploration)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:   # truncated, empty, random bytes
        raise CheckpointError(f"cannot resume from {path}: it is damaged (truncated, empty, not an .npz) or was "
                              f"not written for this model ({type(err).__name__}). Move it away and start "
                              "again with --overwrite") from None


def _restore(path, model, optimizer, exploration):
    with np.load(path, allow_pickle=False) as archive:
        for name, param in model.named_parameters():
            if isinstance(param, SparseWeight):
                positions = B.to_device(archive[f"sparse/{name}/positions"])
                param.set_topology(positions, B.to_device(archive[f"sparse/{name}/values"]))
            else:
                param.data = B.to_device(archive[f"param/{name}"])
            optimizer.velocity[name] = B.to_device(archive[f"velocity/{name}"])
        for name, module, key in model.named_buffers():
            setattr(module, key, B.to_device(archive[f"buffer/{name}"]))
        if exploration is not None:
            for name, explored in exploration.sets.items():
                explored.positions = B.to_device(archive[f"explored/{name}/positions"])
                explored.reliable = B.to_device(archive[f"explored/{name}/reliable"])
                explored.pending = B.to_device(archive[f"explored/{name}/pending"])
        return json.loads(str(archive["meta"]))


def save_parameters(path, model):
    """Dense parameter values only (LTH keeps a model's initial weights to rewind to)."""
    _atomic_savez(path, {name: B.to_host(param.data) for name, param in model.named_parameters()})


def load_parameters(path, model):
    with np.load(path, allow_pickle=False) as archive:
        for name, param in model.named_parameters():
            param.data = B.to_device(archive[name])
