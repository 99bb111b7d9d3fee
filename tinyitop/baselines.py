"""Sparse-training baselines of the paper's Section 5 (Liu et al. 2021, Fig. 7, Table 2).

- GMP, gradual magnitude pruning from dense (Zhu & Gupta 2017): the sparsity of every layer follows
  a cubic schedule s_t = s_f * (1 - (1 - progress)^3); each step removes the smallest |w|.
- SNIP (Lee et al. 2019): one-shot global pruning at initialisation, keeping the largest |g * w|
  on one minibatch.
- LTH (Frankle & Carbin 2019): train dense, keep the global largest |w|, rewind the kept weights
  to their initial values, retrain.
SNIP-SET-ITOP / LTH-SET-ITOP start from these masks and then explore with SET.
"""

from tinyitop import backend as B
from tinyitop.init import active_count, layer_densities
from tinyitop.layers import Conv2d, Linear
from tinyitop.losses import SoftmaxCrossEntropy
from tinyitop.topology import survivors, sparse_layers


def prunable_layers(model, dense_layers=()):
    """{name: dense Linear/Conv2d} that a mask applies to."""
    return {name: m for name, m in model.named_modules()
            if type(m) in (Linear, Conv2d) and name not in dense_layers}


def global_top_masks(scores, density):
    """{name: score array} -> {name: sorted flat positions} of the global top round(density * total)."""
    xp = B.xp
    names = list(scores)
    flat = xp.concatenate([scores[n].reshape(-1) for n in names])          # (total,)
    keep = active_count(density, int(flat.size))
    chosen = xp.sort(xp.argpartition(-flat, keep - 1)[:keep]) if keep < flat.size else xp.arange(flat.size)
    masks, offset = {}, 0
    for name in names:
        size = int(scores[name].size)
        inside = chosen[(chosen >= offset) & (chosen < offset + size)] - offset
        masks[name] = inside.astype(xp.int64)
        offset += size
    return masks


def snip_masks(model, images, labels, density, dense_layers=()):
    """SNIP: connection sensitivity |dL/dw * w| of the dense model at init, on one minibatch."""
    loss_fn = SoftmaxCrossEntropy()
    loss_fn.forward(model.forward(images), labels)
    model.backward(loss_fn.backward())
    scores = {name: B.xp.abs(m.weight.grad * m.weight.data) for name, m in prunable_layers(model, dense_layers).items()}
    return global_top_masks(scores, density)


def magnitude_masks(model, density, dense_layers=()):
    """LTH's one-shot global magnitude pruning of (trained) dense weights."""
    return global_top_masks({name: B.xp.abs(m.weight.data)
                             for name, m in prunable_layers(model, dense_layers).items()}, density)


class GradualPruner:
    """GMP: every `interval` iterations between start_step and end_step, prune each sparse layer
    (starting at density 1) towards its final density on Zhu & Gupta's cubic schedule."""

    def __init__(self, model, optimizer, sparsity, init, start_step, end_step, interval):
        self.model, self.optimizer = model, optimizer
        self.layers = sparse_layers(model)
        shapes = {name: layer.weight.shape for name, layer in self.layers.items()}
        self.final_density = layer_densities(shapes, 1 - sparsity, init)
        self.start_step, self.end_step, self.interval = start_step, max(end_step, start_step + 1), interval

    def target_density(self, name, step):
        progress = min(1.0, max(0.0, (step - self.start_step) / (self.end_step - self.start_step)))
        final_sparsity = 1 - self.final_density[name]
        return 1 - final_sparsity * (1 - (1 - progress) ** 3)

    def maybe_prune(self, step):
        """Prune after iteration `step` if it is a pruning step; returns True if weights were removed."""
        on_schedule = (step - self.start_step) % self.interval == 0 or step == self.end_step
        if step < self.start_step or step > self.end_step or not on_schedule:
            return False
        pruned = False
        for name, layer in self.layers.items():
            weight = layer.weight
            keep = active_count(self.target_density(name, step), weight.numel)
            if keep >= weight.nnz:
                continue
            kept_slots = survivors(weight, weight.nnz - keep)
            weight.set_topology(weight.flat_positions()[kept_slots], weight.data[kept_slots])
            self.optimizer.remap(weight, kept_slots)
            pruned = True
        return pruned

