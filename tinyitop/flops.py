"""FLOPs of training and inference relative to the dense model (Liu et al. 2021, Fig. 2 and Table 2;
the accounting of Evci et al. 2020, RigL, Appendix H).

A Linear/Conv layer costs 2 * (active weights) * (output positions) FLOPs per sample forward
(positions = OH*OW for a convolution, 1 for a Linear) and twice that backward (dx and dW). A sparse
layer therefore costs in proportion to its density. RigL additionally pays the dense weight gradient
at each update. Biases, BN, ReLU and pooling are ignored on both sides of the ratio.
"""
from tinyitop import backend as B
from tinyitop.layers import Conv2d, Linear
from tinyitop.sparse import SparseLinear, SparseWeight


def layer_costs(model, input_shape):
    """{name: (layer, output positions per sample)} for every Linear/Conv layer, dense or sparse.

    One eval-mode forward of two zero samples finds each convolution's output size.
    """
    xp = B.xp
    model.eval()
    model.forward(xp.zeros((2,) + tuple(input_shape), dtype=model.dtype()))
    model.train()
    costs = {}
    for name, module in model.named_modules():
        if isinstance(module, Conv2d):            # includes SparseConv2d
            _, _, out_h, out_w = module.output_shape(module.x_shape)
            costs[name] = (module, out_h * out_w)
        elif isinstance(module, (Linear, SparseLinear)):
            costs[name] = (module, 1)
    return costs


def _active_and_dense(module):
    if isinstance(getattr(module, "weight", None), SparseWeight):
        return module.weight.nnz, module.weight.numel
    numel = int(module.weight.data.size)
    return numel, numel


class FlopCounter:
    """Accumulates training FLOPs step by step; `refresh()` after the topology changes."""

    def __init__(self, model, input_shape):
        self.costs = layer_costs(model, input_shape)
        self.train_flops = 0.0
        self.dense_train_flops = 0.0
        self.refresh()

    def refresh(self):
        """Re-read the active weight counts (after a topology update or a pruning step)."""
        counts = {name: (*_active_and_dense(m), pos) for name, (m, pos) in self.costs.items()}
        self.forward_sparse = sum(2 * active * pos for active, _, pos in counts.values())
        self.forward_dense = sum(2 * dense * pos for _, dense, pos in counts.values())
        self.dense_grad_extra = {name: 2 * (dense - active) * pos for name, (active, dense, pos) in counts.items()}

    def step(self, batch_size, dense_grad_layers=()):
        """One training iteration: forward + backward (dx, dW) = 3x the forward cost."""
        self.train_flops += 3 * self.forward_sparse * batch_size
        self.train_flops += sum(self.dense_grad_extra[name] for name in dense_grad_layers) * batch_size
        self.dense_train_flops += 3 * self.forward_dense * batch_size

    def train_relative(self):
        return self.train_flops / self.dense_train_flops if self.dense_train_flops else 1.0

    def test_relative(self):
        """Inference cost of the current model relative to its dense twin."""
        return self.forward_sparse / self.forward_dense
