"""Model shapes, parameter counts equal to PyTorch's reference models, input checks, overfitting."""
import numpy as np
import pytest

from tinyitop import SGD, SoftmaxCrossEntropy, backend as B, mlp, mlp_cifar, resnet18, resnet34, resnet50, vgg16
from tinyitop.layers import BatchNorm2d, Conv2d, Linear

# Counted on PyTorch 2.13 replicas of the reference models (sparselearning's vgg-c, CIFAR ResNets).
PYTORCH_PARAMETER_COUNTS = {mlp_cifar: 3_676_682, vgg16: 11_323_466, resnet18: 11_173_952,
                            resnet34: 21_282_112, resnet50: 23_520_832}


@pytest.mark.parametrize("factory", list(PYTORCH_PARAMETER_COUNTS), ids=lambda f: f.__name__)
def test_parameter_counts_match_pytorch(factory):
    assert factory().num_parameters() == PYTORCH_PARAMETER_COUNTS[factory]


def test_mlp_weights_and_biases():
    model = mlp_cifar()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]
    weights = sum(p.numel for n, p in model.named_parameters() if n.endswith("weight"))
    assert weights == 3_675_136 and model.num_parameters() - weights == 1_546


def test_resnet_parameter_names_read_like_pytorch():
    names = [n for n, _ in resnet18().named_parameters()]
    assert "layer2.0.shortcut.0.weight" in names and "layer1.1.conv2.weight" in names
    assert names[-1] == "linear.weight"


@pytest.mark.parametrize("factory", [vgg16, resnet18], ids=lambda f: f.__name__)
def test_cifar_models_forward_float32(factory):
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y = factory().forward(x)
    assert y.shape == (2, 10) and y.dtype == np.float32


def test_default_init_matches_pytorch_bounds():
    layer = Linear(400, 30)
    bound = 1 / np.sqrt(400)
    assert np.abs(layer.weight.data).max() <= bound and np.abs(layer.weight.data).max() > 0.95 * bound
    assert layer.weight.data.dtype == np.float32
    conv = Conv2d(3, 8, 3)
    assert np.abs(conv.weight.data).max() <= 1 / np.sqrt(27)


def test_float64_models_compute_in_float64():
    model = mlp(6, (5,), 2).astype(np.float64)
    assert model.forward(np.ones((3, 6))).dtype == np.float64


@pytest.mark.parametrize("layer,x,message", [
    (Linear(4, 3), np.ones((2, 5), np.float32), "expects 4 features"),
    (Linear(4, 3), np.ones((2, 2, 2), np.float32), "expects a 2-D input"),
    (Conv2d(3, 4, 3), np.ones((2, 4, 8, 8), np.float32), "expects 3 features"),
    (Conv2d(3, 4, 3), np.ones((2, 3, 8), np.float32), "expects a 4-D input"),
    (Conv2d(3, 4, 5), np.ones((2, 3, 3, 3), np.float32), "smaller than the kernel"),
    (BatchNorm2d(3), np.ones((2, 3, 8), np.float32), "expects a 4-D input"),
])
def test_wrong_shapes_are_clear_errors(layer, x, message):
    with pytest.raises(ValueError, match=message):
        layer.forward(x)


def test_wrong_dtype_is_a_clear_error():
    with pytest.raises(TypeError, match="float32 parameters but got a float64 input"):
        Linear(4, 3).forward(np.ones((2, 4)))


def test_tiny_model_overfits_a_fixed_batch():
    rng = np.random.default_rng(3)
    x = B.to_device(rng.standard_normal((32, 20)), dtype="float32")
    labels = B.to_device(rng.integers(0, 4, 32))
    model = mlp(20, (64,), 4)
    loss_fn, opt = SoftmaxCrossEntropy(), SGD(model.named_parameters(), lr=0.1, weight_decay=0)
    for _ in range(200):
        loss_fn.forward(model.forward(x), labels)
        model.backward(loss_fn.backward())
        opt.step()
    predictions = B.to_host(model.forward(x).argmax(axis=1))
    assert (predictions == labels).mean() == 1.0


def test_first_layer_skips_the_input_gradient_and_other_gradients_are_unchanged(host_rng):
    from tinyitop.models import skip_input_gradient
    from tinyitop.losses import SoftmaxCrossEntropy
    x = host_rng.standard_normal((4, 12))
    grads = []
    for skip in (False, True):
        B.seed(0)
        model = mlp(12, (8,), 3, sparsity=0.5).astype("float64")
        if skip:
            assert skip_input_gradient(model) == "fc1"
        loss_fn = SoftmaxCrossEntropy()
        loss_fn.forward(model.forward(x), np.array([0, 1, 2, 0]))
        dx = model.backward(loss_fn.backward())
        assert (dx is None) == skip
        grads.append({n: p.grad.copy() for n, p in model.named_parameters()})
    for name in grads[0]:
        np.testing.assert_array_equal(grads[0][name], grads[1][name])


# ---- width: narrow conv nets ------------------------------------------------------------------------
@pytest.mark.parametrize("factory", [vgg16, resnet18, resnet34, resnet50], ids=lambda f: f.__name__)
def test_width_one_is_the_papers_network(factory):
    assert factory(width=1.0).num_parameters() == PYTORCH_PARAMETER_COUNTS[factory]
    assert [(n, p.shape) for n, p in factory(width=1.0).named_parameters()] == \
        [(n, p.shape) for n, p in factory().named_parameters()]


def test_quarter_width_scales_every_channel_count():
    convs = [m for _, m in vgg16(width=0.25).named_modules() if isinstance(m, Conv2d)]
    assert [m.out_channels for m in convs] == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]
    assert [convs[i].kernel_size for i in (6, 9, 12)] == [(1, 1)] * 3          # the 'C' layers stay 1x1
    linears = [m for _, m in vgg16(width=0.25).named_modules() if isinstance(m, Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 128), (128, 128), (128, 10)]
    stages = [m.out_channels for n, m in resnet18(width=0.25).named_modules()
              if isinstance(m, Conv2d) and n.endswith(".conv2")]
    assert stages == [16, 16, 32, 32, 64, 64, 128, 128]
    # pinned: 16x fewer weights than width 1, give or take the biases and BatchNorm
    assert vgg16(width=0.25).num_parameters() == 711_962 and resnet18(width=0.25).num_parameters() == 701_456


@pytest.mark.parametrize("factory", [vgg16, resnet18], ids=lambda f: f.__name__)
def test_any_width_keeps_at_least_one_channel_and_runs(factory):
    model = factory(width=0.001)
    assert min(m.out_channels for _, m in model.named_modules() if isinstance(m, Conv2d)) == 1
    out = model.forward(B.to_device(np.zeros((2, 3, 32, 32), np.float32)))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("width", [0, -0.5, float("nan"), float("inf"), "0.5"])
def test_a_bad_width_is_a_clear_error(width):
    with pytest.raises(ValueError, match="width must be a positive number"):
        vgg16(width=width)
