"""Initial sparse topology: per-layer densities (uniform, ER, ERK) and exact random positions.

ER is from Mocanu et al. 2018 (SET), ERK from Evci et al. 2020 (RigL): a layer's density is
proportional to sum(shape) / prod(shape), scaled by one epsilon so that the whole network keeps
the target number of weights; a layer that would exceed density 1 is made dense and epsilon is
solved again. Positions are drawn *exactly* (round(density * numel) of them) without replacement.
"""
import math

import numpy as np

from tinyitop import backend as B

INIT_METHODS = ("uniform", "er", "erk")


def layer_densities(shapes, density, method="erk"):
    """{name: weight shape} and a global density in (0, 1] -> {name: density of that layer}.

    'er' uses the two matrix dimensions (out, in) only; 'erk' includes the kernel dimensions.
    For a 2-D MLP they agree. Example (paper MLP, density 0.05): fc1 0.0413, fc2 0.0929, fc3 1.0.
    """
    if method not in INIT_METHODS:
        raise ValueError(f"unknown init {method!r}: choose one of {', '.join(INIT_METHODS)}")
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if not shapes:
        raise ValueError("no layer is left to be sparse (every one is in dense_layers): use method 'dense', "
                         "or keep fewer layers dense")
    numel = {name: math.prod(shape) for name, shape in shapes.items()}
    if method == "uniform" or density == 1:
        return {name: density for name in shapes}
    if method == "er":
        raw = {name: (shape[0] + shape[1]) / (shape[0] * shape[1]) for name, shape in shapes.items()}
    else:
        raw = {name: sum(shape) / math.prod(shape) for name, shape in shapes.items()}
    target = density * sum(numel.values())
    dense = set()
    while True:
        # epsilon * raw_l * numel_l summed over the non-dense layers must give what dense ones leave.
        rest = target - sum(numel[name] for name in dense)
        divisor = sum(raw[name] * numel[name] for name in shapes if name not in dense)
        epsilon = rest / divisor
        too_dense = [name for name in shapes if name not in dense and epsilon * raw[name] > 1]
        if not too_dense:
            break
        dense.add(max(too_dense, key=lambda name: raw[name]))   # saturate the densest, solve again
    return {name: 1.0 if name in dense else epsilon * raw[name] for name in shapes}


def active_count(density, numel):
    """The exact number of active weights of a layer (at least one)."""
    return max(1, min(numel, int(round(density * numel))))


def contains(sorted_values, queries):
    """Boolean mask: which of `queries` are in the sorted 1-D array `sorted_values`."""
    xp = B.xp
    if sorted_values.size == 0:
        return xp.zeros(queries.shape, dtype=bool)
    where = xp.searchsorted(sorted_values, queries)
    where = xp.minimum(where, sorted_values.size - 1)
    return sorted_values[where] == queries


def random_positions(numel, k, excluded=None, rng=None):
    """k distinct flat positions in [0, numel), uniformly, none in sorted `excluded`; sorted int64.

    Rejection sampling in vectorised rounds: memory in proportion to k, never to numel, unless
    the allowed positions are few (then they are listed explicitly: at most ~4k of them). Random
    numbers come from the host generator (backend.rng) and are moved to the device; the set
    arithmetic (membership, unique, sort) runs on the device.
    """
    xp = B.xp
    rng = rng or B.rng()
    n_excluded = 0 if excluded is None else int(excluded.size)
    available = numel - n_excluded
    if k > available:
        raise ValueError(f"cannot draw {k} positions: only {available} of {numel} are allowed")
    if k == 0:
        return xp.zeros(0, dtype=xp.int64)
    if available <= 4 * k:
        allowed = xp.ones(numel, dtype=bool)
        if n_excluded:
            allowed[excluded] = False
        candidates = xp.nonzero(allowed)[0].astype(xp.int64)
        return xp.sort(candidates[B.to_device(rng.permutation(candidates.size)[:k])])
    chosen = xp.zeros(0, dtype=xp.int64)
    while chosen.size < k:
        need = k - chosen.size
        draws = B.to_device(rng.integers(0, numel, size=int(need * numel / available * 1.1) + 16, dtype=np.int64))
        if n_excluded:
            draws = draws[~contains(excluded, draws)]
        chosen = xp.unique(xp.concatenate([chosen, draws]))
    if chosen.size > k:   # a uniform subset of a uniform set of distinct draws is still uniform
        chosen = xp.sort(chosen[B.to_device(rng.permutation(chosen.size)[:k])])
    return chosen
