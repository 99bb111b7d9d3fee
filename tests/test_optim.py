"""SGD against PyTorch's update rule written out by hand; LR schedules; state remapping."""
import numpy as np
import pytest

from tinyitop import SGD, MultiStepLR
from tinyitop.layers import Parameter


def test_sgd_nesterov_weight_decay_matches_the_formula(host_rng):
    w0 = host_rng.standard_normal(5)
    p = Parameter(w0.copy())
    opt = SGD([("w", p)], lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    w, v = w0.copy(), np.zeros(5)
    for _ in range(3):
        g = host_rng.standard_normal(5)
        p.grad = g.copy()
        opt.step()
        d = g + 5e-4 * w              # torch.optim.SGD: d_p = grad + wd * p
        v = 0.9 * v + d               # buf = momentum * buf + d_p (dampening 0)
        w = w - 0.1 * (d + 0.9 * v)   # nesterov: d_p = d_p + momentum * buf
    np.testing.assert_allclose(p.data, w, rtol=1e-12)


def test_plain_momentum_without_nesterov(host_rng):
    p = Parameter(np.zeros(3))
    opt = SGD([("w", p)], lr=1.0, momentum=0.5, nesterov=False, weight_decay=0)
    for _ in range(2):
        p.grad = np.ones(3)
        opt.step()
    np.testing.assert_allclose(p.data, -(1 + 1.5) * np.ones(3))


def test_remap_keeps_surviving_state_and_zeroes_new():
    p = Parameter(np.zeros(4))
    opt = SGD([("w", p)], lr=0.1)
    opt.velocity["w"] = np.array([1.0, 2.0, 3.0, 4.0])
    opt.remap(p, np.array([3, -1, 0, -1, 1]))
    np.testing.assert_array_equal(opt.velocity["w"], [4.0, 0.0, 1.0, 0.0, 2.0])


def test_multistep_schedule():
    lr = MultiStepLR(0.1, epochs=200)
    assert [lr(0), lr(99), lr(100), lr(149), lr(150), lr(199)] == [0.1, 0.1, 0.1 * 0.1, 0.1 * 0.1,
                                                                   0.1 * 0.1 ** 2, 0.1 * 0.1 ** 2]


def test_short_runs_start_at_the_base_rate():
    assert MultiStepLR(0.1, epochs=1)(0) == 0.1
    two = MultiStepLR(0.1, epochs=2)
    # the reference's milestones int(2/2)=1 and int(2*3/4)=1: both drops at epoch 1
    assert two(0) == 0.1 and two(1) == pytest.approx(0.1 * 0.1 ** 2)

