"""The topology update of dynamic sparse training: prune the weakest weights, grow as many new ones.

SET (Mocanu et al. 2018) grows at random, RigL (Evci et al. 2020) where the dense gradient is
largest, and ITOP's "unexplored" mode (Liu et al. 2021, Appendix F) prefers never-activated positions.
Every `update_interval` iterations, for each sparse layer: prune k = ceil(p * nnz) smallest |w|, grow
exactly k among the positions inactive after pruning. nnz is unchanged; grown weights and their
momentum start at zero; the prune rate p follows a cosine from P down to 0.005 over training.
"""
import math

from tinyitop import backend as B
from tinyitop.init import random_positions
from tinyitop.sparse import SPARSE_TYPES
from tinyitop.sparse_kernels import DENSE_BUFFER_MAX_BYTES

GROWTH_MODES = ("random", "gradient", "unexplored")
FINAL_PRUNE_RATE = 0.005


def prune_rate_at(step, total_steps, prune_rate=0.5, final=FINAL_PRUNE_RATE):
    """The prune rate at iteration s: a cosine decay from `prune_rate` at s = 0 to `final` at s = T,
    p(s) = final + (prune_rate - final) * (1 + cos(pi * s / T)) / 2."""
    return final + 0.5 * (prune_rate - final) * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def prune_count(rate, nnz):
    """k = ceil(p * nnz): how many weights an update at prune rate p removes (and regrows)."""
    return math.ceil(rate * nnz)


def sparse_layers(model):
    """{name: layer} of every sparse layer in the model, in order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SPARSE_TYPES)}


def survivors(weight, k):
    """Slots (indices into the nonzeros) that survive removing the k smallest |w|; sorted."""
    xp = B.xp
    if k == 0:
        return xp.arange(weight.nnz)
    magnitudes = xp.abs(weight.data)
    keep = xp.argpartition(magnitudes, k)[k:] if k < weight.nnz else xp.zeros(0, dtype=xp.int64)
    return xp.sort(keep)


def top_gradient_positions(weight, kept_positions, k, dout_t, inputs_t, max_bytes=DENSE_BUFFER_MAX_BYTES):
    """RigL's growth without a dense gradient: the k absent flat positions with the largest
    |dL/dw| = |dout_t @ inputs_t.T| of this minibatch (dout_t (out, M), inputs_t (in, M)), scored one
    block of rows at a time (at most `max_bytes` of scores) with a running top-k. Memory: one block
    plus 2k candidates, whatever the layer's size. Sorted (k,) int64.

    Once k candidates are held, a block's scores only compete if they beat the weakest of them (one
    comparison per score, instead of a partial sort of the block), so that on very wide layers the
    selection costs less than the block products themselves.
    """
    xp = B.xp
    n_out, n_in = weight.shape
    rows_per_block = max(1, max_bytes // (n_in * dout_t.dtype.itemsize))
    best_positions = xp.zeros(0, dtype=xp.int64)
    best_scores = xp.zeros(0, dtype=dout_t.dtype)
    for r0 in range(0, n_out, rows_per_block):
        r1 = min(r0 + rows_per_block, n_out)
        scores = dout_t[r0:r1] @ inputs_t.T                             # (rows, in) this block only
        scores = xp.abs(scores, out=scores).reshape(-1)
        lo, hi = (int(i) for i in xp.searchsorted(kept_positions, xp.asarray([r0 * n_in, r1 * n_in])))
        scores[kept_positions[lo:hi] - r0 * n_in] = -1                  # active ones are not candidates
        if best_positions.size == k:                                    # full: only scores above the weakest
            top = xp.flatnonzero(scores > best_scores.min())
        else:
            take = min(k, scores.size)
            top = xp.argpartition(-scores, take - 1)[:take] if take < scores.size else xp.arange(scores.size)
        positions = xp.concatenate([best_positions, top.astype(xp.int64) + r0 * n_in])
        values = xp.concatenate([best_scores, scores[top]])
        if positions.size > k:                                          # keep the running top-k
            keep = xp.argpartition(-values, k - 1)[:k]
            positions, values = positions[keep], values[keep]
        best_positions, best_scores = positions, values
    return xp.sort(best_positions)


def grow(weight, kept_positions, k, mode, explored=None, dense_grad=None, grad_operands=None):
    """k new flat positions, none in `kept_positions` (sorted), chosen by `mode`; sorted.

    Gradient growth scores a dense gradient (out, in) when the layer kept one (it fits the memory
    cap), else the step's operands (dout_t, inputs_t) by blocks (`top_gradient_positions`).
    """
    xp = B.xp
    numel = weight.numel
    if mode == "random":
        return random_positions(numel, k, excluded=kept_positions)
    if mode == "gradient":
        if dense_grad is None and k and grad_operands is not None:
            return top_gradient_positions(weight, kept_positions, k, *grad_operands)
        if dense_grad is None:
            raise ValueError("gradient growth needs this step's gradient operands or dense gradient "
                             "(layer.keep_dense_grad)")
        # Into a C-ordered buffer: dense_grad may be a transposed view, whose abs() keeps that
        # layout (on NumPy), and reshape(-1) would then copy all of it once more.
        scores = xp.abs(dense_grad, out=xp.empty(dense_grad.shape, dtype=dense_grad.dtype)).reshape(-1)  # (numel,)
        scores[kept_positions] = -1                                # active ones are not candidates
        return xp.sort(xp.argpartition(-scores, k - 1)[:k]).astype(xp.int64) if k else kept_positions[:0]
    if mode == "unexplored":
        # Never-activated positions first; explored ones already include every kept position.
        n_unexplored = numel - explored.count()
        first = random_positions(numel, min(k, n_unexplored), excluded=explored.positions.astype(xp.int64))
        if first.size == k:
            return first
        rest = random_positions(numel, k - first.size,
                                excluded=xp.unique(xp.concatenate([kept_positions, first])))
        return xp.sort(xp.concatenate([first, rest]))
    raise ValueError(f"unknown growth mode {mode!r}: choose one of {', '.join(GROWTH_MODES)}")


def prune_and_grow(weight, rate, mode, explored=None, dense_grad=None, grad_operands=None):
    """Prune and regrow one SparseWeight in place.

    Returns (source, kept_positions, grown_positions); `source[j]` is the old slot of new nonzero j,
    or -1 where it was grown (the optimizer uses it to carry momentum over).
    """
    xp = B.xp
    k = prune_count(rate, weight.nnz)
    positions = weight.flat_positions()                            # (nnz,) sorted
    kept_slots = survivors(weight, k)                                   # (nnz - k,)
    kept_positions = positions[kept_slots]
    grown = grow(weight, kept_positions, k, mode, explored, dense_grad, grad_operands)
    new_positions = xp.concatenate([kept_positions, grown])
    source = xp.concatenate([kept_slots, xp.full(grown.size, -1, dtype=kept_slots.dtype)])
    order = xp.argsort(new_positions)
    new_positions, source = new_positions[order], source[order]
    values = xp.zeros(new_positions.size, dtype=weight.dtype)
    values[source >= 0] = weight.data[source[source >= 0]]         # survivors keep their value; grown = 0
    weight.set_topology(new_positions, values)
    return source, kept_positions, grown


class TopologyUpdater:
    """Decides when to update and applies the update to every sparse layer of a model.

    method: 'static' (never), 'set' (random growth by default) or 'rigl' (gradient growth).
    """

    def __init__(self, model, optimizer, exploration, method="set", growth=None, update_interval=1500,
                 prune_rate=0.5, total_steps=1, stop_exploration_step=None):
        if growth is None:
            growth = "gradient" if method == "rigl" else "random"
        if growth not in GROWTH_MODES:
            raise ValueError(f"unknown growth mode {growth!r}: choose one of {', '.join(GROWTH_MODES)}")
        if method == "rigl" and growth != "gradient" or method == "set" and growth == "gradient":
            raise ValueError(f"method {method!r} does not grow by {growth!r}")
        if update_interval < 1:
            raise ValueError(f"update_interval must be >= 1, got {update_interval}")
        if not 0 < prune_rate < 1:
            raise ValueError(f"prune rate must be in (0, 1), got {prune_rate}")
        self.model, self.optimizer, self.exploration = model, optimizer, exploration
        self.method, self.growth, self.update_interval = method, growth, update_interval
        self.prune_rate, self.total_steps = prune_rate, total_steps
        self.stop_exploration_step = stop_exploration_step
        # A layer at density 1 (made dense by ERK) has nothing to explore.
        self.layers = {n: layer for n, layer in sparse_layers(model).items() if layer.weight.density < 1}
        # {layer name: (source, kept positions, grown positions)} of the last update, for readers
        # who want to watch it (demos/one_update.py); see prune_and_grow for what each holds.
        self.last_update = {}

    def is_update_step(self, step):
        """Topology changes after iteration `step` (1-based) every update_interval iterations."""
        if self.method not in ("set", "rigl") or not self.layers or step % self.update_interval \
                or step >= self.total_steps:
            return False
        return self.stop_exploration_step is None or step <= self.stop_exploration_step

    def prepare(self, step):
        """Before the backward of iteration `step`: RigL asks the layers to keep their dense gradient."""
        want = self.growth == "gradient" and self.is_update_step(step)
        for layer in self.layers.values():
            layer.keep_dense_grad = want

    def maybe_update(self, step):
        """After the optimizer step of iteration `step`: prune and regrow every layer. Returns the prune
        rate used, or None; `last_update` then holds each layer's (source, kept, grown), which the
        caller records in the explored sets (Exploration.record_updates: R_s grows there)."""
        if not self.is_update_step(step):
            return None
        rate = prune_rate_at(step, self.total_steps, self.prune_rate)
        for name, layer in self.layers.items():
            weight = layer.weight
            explored = self.exploration.sets[name]
            source, kept, grown = prune_and_grow(weight, rate, self.growth, explored, layer.dense_grad,
                                               layer.grad_operands)
            self.optimizer.remap(weight, source)
            layer.keep_dense_grad, layer.dense_grad, layer.grad_operands = False, None, None
            self.last_update[name] = (source, kept, grown)
        return rate
