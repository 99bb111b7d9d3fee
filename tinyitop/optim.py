"""SGD with momentum, Nesterov and weight decay (PyTorch semantics), and learning-rate schedules.

State is one velocity array per parameter, aligned with `param.data`. For a sparse weight that is
a vector aligned with its nonzeros, so after a topology update `remap` carries the velocity of
surviving weights over and starts grown ones at zero (Liu et al. 2021, Appendix: optimizer state).
"""

from tinyitop import backend as B
from tinyitop import fused


class SGD:
    def __init__(self, named_parameters, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.params = list(named_parameters)
        self.lr, self.momentum, self.nesterov, self.weight_decay = lr, momentum, nesterov, weight_decay
        self.velocity = {name: B.xp.zeros(p.data.shape, dtype=p.data.dtype) for name, p in self.params}
        self._name_of = {id(p): name for name, p in self.params}

    def step(self):
        for name, p in self.params:
            if not fused.gpu():
                self.update(p.data, p.grad, self.velocity[name])
            else:                        # GPU aside: `update` as one kernel per parameter (fused.py)
                fused.sgd_step(p.data, p.grad, self.velocity[name], self.lr, self.momentum, self.weight_decay,
                               self.nesterov)

    def update(self, param, grad, velocity):
        """In place (for a CSR weight `param` is the CSR's own values): g = grad + weight_decay param;
        velocity = momentum velocity + g (no dampening); param -= lr (g + momentum velocity) with
        Nesterov, else lr velocity."""
        g = grad + self.weight_decay * param if self.weight_decay else grad
        velocity *= self.momentum
        velocity += g
        param -= self.lr * (g + self.momentum * velocity if self.nesterov else velocity)

    def remap(self, param, source):
        """After a topology update of `param`: new slot j takes old slot source[j]; < 0 -> zero."""
        name = self._name_of[id(param)]
        old = self.velocity[name]
        xp = B.xp
        keep = source >= 0
        new = xp.zeros(source.shape, dtype=old.dtype)
        new[keep] = old[source[keep]]
        self.velocity[name] = new


class MultiStepLR:
    """lr * gamma^(number of milestones passed), the ITOP reference's schedule.

    Milestones are epochs int(f * E) * m for E epochs and multiplier m: truncate first, then
    multiply, as the reference computes them (rounding f * E * m moves a drop in most cases, e.g.
    E=250, m=5: 938 instead of 935).
    """

    def __init__(self, base_lr, epochs, multiplier=1, milestones=(0.5, 0.75), gamma=0.1):
        self.base_lr, self.gamma = base_lr, gamma
        # At least epoch 1: a one-epoch run must not start at the reduced rate.
        self.milestone_epochs = [max(1, int(f * epochs) * multiplier) for f in milestones]

    def __call__(self, epoch):
        passed = sum(epoch >= e for e in self.milestone_epochs)
        return self.base_lr * self.gamma ** passed

