"""Every layer's backward pass against centred differences in float64."""
import numpy as np
import pytest

from gradcheck import away_from_zero, check_layer, distinct_values, to_float64
from tinyitop import SoftmaxCrossEntropy
from tinyitop.blocks import BasicBlock, Bottleneck
from tinyitop.layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d,
                             ReLU, Sequential)


def test_linear(host_rng):
    layer = to_float64(Linear(5, 4))
    assert check_layer(layer, host_rng.standard_normal((3, 5)), host_rng) == ["x", "weight", "bias"]


def test_linear_without_bias(host_rng):
    layer = to_float64(Linear(5, 4, bias=False))
    assert check_layer(layer, host_rng.standard_normal((3, 5)), host_rng) == ["x", "weight"]


@pytest.mark.parametrize("kernel,stride,padding,bias", [(3, 1, 1, True), (3, 2, 1, False), (1, 1, 1, True),
                                                        (2, 2, 0, True), ((3, 2), 1, 0, True)])
def test_conv2d(host_rng, kernel, stride, padding, bias):
    layer = to_float64(Conv2d(3, 4, kernel, stride=stride, padding=padding, bias=bias))
    check_layer(layer, host_rng.standard_normal((2, 3, 6, 5)), host_rng)


@pytest.mark.parametrize("cls,shape", [(BatchNorm1d, (6, 4)), (BatchNorm2d, (3, 4, 3, 2))])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm(host_rng, cls, shape, training):
    layer = to_float64(cls(4))
    layer.weight.data = host_rng.uniform(0.5, 1.5, 4)     # non-trivial gamma and beta
    layer.bias.data = host_rng.standard_normal(4)
    layer.running_mean = host_rng.standard_normal(4)
    layer.running_var = host_rng.uniform(0.5, 2.0, 4)
    layer.train(training)
    x = host_rng.standard_normal(shape) * 2 + 1
    check_layer(layer, x, host_rng)


def test_batchnorm2d_normalises_per_channel(host_rng):
    layer = BatchNorm2d(3)
    x = (host_rng.standard_normal((4, 3, 5, 5)) * np.array([1, 5, 10])[None, :, None, None]).astype(np.float32)
    y = layer.forward(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, atol=1e-3)
    # running stats moved 10% of the way, with the unbiased variance
    np.testing.assert_allclose(layer.running_mean, 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(layer.running_var, 0.9 + 0.1 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-4)


def test_relu(host_rng):
    check_layer(ReLU(), away_from_zero(host_rng, (3, 7)), host_rng)


@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
@pytest.mark.parametrize("size", [(4, 4), (5, 7)])   # odd sizes: floor mode drops the last row/col
def test_pooling(host_rng, cls, size):
    check_layer(cls(2), distinct_values(host_rng, (2, 3) + size), host_rng)


def test_flatten(host_rng):
    check_layer(Flatten(), host_rng.standard_normal((2, 3, 2, 2)), host_rng)


@pytest.mark.parametrize("block,in_planes,planes,stride", [(BasicBlock, 4, 4, 1), (BasicBlock, 4, 6, 2),
                                                          (Bottleneck, 8, 2, 1), (Bottleneck, 4, 2, 2)])
def test_residual_blocks(host_rng, block, in_planes, planes, stride):
    layer = to_float64(block(in_planes, planes, stride))
    checked = check_layer(layer, host_rng.standard_normal((2, in_planes, 4, 4)), host_rng, max_entries=25)
    assert len(checked) == 1 + len(layer.named_parameters())


def test_cross_entropy_gradient(host_rng):
    from gradcheck import numeric_gradient, relative_error
    loss_fn = SoftmaxCrossEntropy()
    logits = host_rng.standard_normal((5, 4))  # unit scale: no probability so small that round-off dominates
    labels = host_rng.integers(0, 4, 5)
    loss = loss_fn.forward(logits, labels)
    analytic = loss_fn.backward()
    _, numeric = numeric_gradient(lambda: float(loss_fn.forward(logits, labels)), logits)
    assert relative_error(analytic.reshape(-1), numeric) < 1e-6
    # against a direct formula
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert np.isclose(float(loss), -np.log(p[np.arange(5), labels]).mean())


def test_cross_entropy_is_stable_for_huge_logits():
    loss = SoftmaxCrossEntropy().forward(np.array([[1000.0, 0.0], [0.0, -1000.0]], dtype=np.float32),
                                         np.array([0, 1]))
    assert np.isfinite(float(loss)) and np.isclose(float(loss), 500.0)


def _tiny_models():
    mlp = Sequential([("flatten", Flatten()), ("fc1", Linear(12, 6)), ("relu1", ReLU()),
                      ("fc2", Linear(6, 5)), ("relu2", ReLU()), ("fc3", Linear(5, 3))])
    resnet = Sequential([("conv1", Conv2d(3, 4, 3, padding=1, bias=False)), ("bn1", BatchNorm2d(4)),
                         ("relu", ReLU()), ("layer1", BasicBlock(4, 4, 1)), ("layer2", BasicBlock(4, 6, 2)),
                         ("layer3", Bottleneck(6, 2, 2)), ("avgpool", AvgPool2d(2)), ("flatten", Flatten()),
                         ("linear", Linear(8, 3, bias=False))])
    return {"mlp": (mlp, (4, 3, 2, 2)), "resnet": (resnet, (3, 3, 8, 8))}


@pytest.mark.parametrize("which", ["mlp", "resnet"])
def test_whole_model_through_the_loss(host_rng, which):
    """Model + cross-entropy: every parameter of every layer against finite differences."""
    from gradcheck import numeric_gradient, relative_error
    model, shape = _tiny_models()[which]
    to_float64(model)
    x = host_rng.standard_normal(shape)
    labels = host_rng.integers(0, 3, shape[0])
    loss_fn = SoftmaxCrossEntropy()
    loss_fn.forward(model.forward(x), labels)
    model.backward(loss_fn.backward())
    loss = lambda: float(loss_fn.forward(model.forward(x), labels))
    for name, p in model.named_parameters():
        entries, numeric = numeric_gradient(loss, p.data, max_entries=12, rng=host_rng)
        assert relative_error(p.grad.reshape(-1)[entries], numeric) < 1e-5, name


def test_cuda_bodies_of_the_cross_entropy_equal_its_expressions(host_rng, tmp_path):
    """The CuPy kernels of tinyitop/losses.py (tinyitop/fused.py), run on the CPU (tests/cuda_on_cpu.py)."""
    from cuda_on_cpu import compile_body
    forward, backward = compile_body("softmax_xent", tmp_path), compile_body("softmax_xent_grad", tmp_path)
    loss_fn = SoftmaxCrossEntropy()
    for n, k, scale in ((7, 10, 1.0), (3, 100, 30.0), (2, 2, 1000.0)):    # up to huge logits
        logits = host_rng.standard_normal((n, k)) * scale
        labels = host_rng.integers(0, k, n)
        loss = loss_fn.forward(logits, labels)
        probs, row_losses = np.empty((n, k)), np.empty(n)
        forward(logits, labels, k, probs, row_losses)
        np.testing.assert_allclose(probs, loss_fn.probs, rtol=1e-12, atol=1e-300)
        assert np.isclose(row_losses.mean(), float(loss), rtol=1e-12)
        dlogits = np.empty((n, k))
        backward(probs, labels, k, n, dlogits)
        np.testing.assert_array_equal(dlogits, (probs - np.eye(k)[labels]) / n)
        np.testing.assert_allclose(dlogits, loss_fn.backward(), rtol=1e-12, atol=1e-300)
