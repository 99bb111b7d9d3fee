"""Explored sets and the ITOP rate R_s (Liu et al. 2021, Section 3).

Per sparse layer we keep the union of every mask that was ever in effect (the "explored set"):
R_s = sum_l |explored_l| / sum_l numel_l. A grown connection is *reliably* explored once it survives
the next prune (`rs_reliable`); the initial mask counts as reliable. Sets are sorted flat positions
(4-8 bytes per explored weight), plus one flag byte each for reliability.
"""
from tinyitop import backend as B
from tinyitop.init import contains


class ExploredSet:
    """The explored positions of one layer of `numel` weights, starting from its initial mask."""

    def __init__(self, numel, initial_positions):
        xp = B.xp
        self.numel = numel
        index_dtype = xp.int32 if numel < 2 ** 31 else xp.int64
        self.positions = xp.unique(initial_positions).astype(index_dtype)   # sorted, unique
        self.reliable = xp.ones(self.positions.size, dtype=bool)
        self.pending = xp.zeros(0, dtype=xp.int64)    # grown at the last update, not yet confirmed

    def count(self):
        return int(self.positions.size)

    def reliable_count(self):
        return int(self.reliable.sum())               # sync point (once per update / log)

    def contains(self, positions):
        return contains(self.positions, positions.astype(self.positions.dtype))

    def record_update(self, kept, grown):
        """One topology update: `kept` survived this prune, `grown` are the new connections."""
        xp = B.xp
        # Last update's growth is reliable if it survived this prune.
        survived = self.pending[contains(kept, self.pending)] if self.pending.size else self.pending
        if survived.size:
            self.reliable[xp.searchsorted(self.positions, survived.astype(self.positions.dtype))] = True
        # Union with the newly grown positions (new ones not yet reliable).
        new = grown[~self.contains(grown)].astype(self.positions.dtype)
        if new.size:
            merged = xp.concatenate([self.positions, new])
            flags = xp.concatenate([self.reliable, xp.zeros(new.size, dtype=bool)])
            order = xp.argsort(merged)       # positions are unique: any sort gives the same order
            self.positions, self.reliable = merged[order], flags[order]
        self.pending = grown

    def nbytes(self):
        return int(self.positions.nbytes + self.reliable.nbytes + self.pending.nbytes)


class Exploration:
    """Explored sets of every sparse layer of a model, and R_s in total and per layer."""

    def __init__(self, sparse_layers):
        """sparse_layers: {name: layer with .weight} (see topology.sparse_layers)."""
        self.sets = {name: ExploredSet(layer.weight.numel, layer.weight.flat_positions())
                     for name, layer in sparse_layers.items()}

    def record_updates(self, updates):
        """Take in one topology update of every layer: {name: (source, kept, grown)}, as
        TopologyUpdater.last_update holds it."""
        for name, (_, kept, grown) in updates.items():
            self.sets[name].record_update(kept, grown)

    def total_numel(self):
        return sum(s.numel for s in self.sets.values())

    def rs(self):
        """ITOP rate: explored weights / all weights of the sparse layers (1.0 for a dense model)."""
        if not self.sets:
            return 1.0
        return sum(s.count() for s in self.sets.values()) / self.total_numel()

    def rs_reliable(self):
        if not self.sets:
            return 1.0
        return sum(s.reliable_count() for s in self.sets.values()) / self.total_numel()

    def rs_per_layer(self):
        return {name: s.count() / s.numel for name, s in self.sets.items()}

    def rs_reliable_per_layer(self):
        return {name: s.reliable_count() / s.numel for name, s in self.sets.items()}

