"""Real CuPy on a real GPU: runs when one is present, skips otherwise."""
import numpy as np
import pytest

from tinyitop import SGD, SoftmaxCrossEntropy, backend as B, mlp


def _cupy_or_skip():
    try:
        B.use("cupy")
    except B.BackendError as err:
        pytest.skip(f"no GPU backend here: {err}")


def test_mlp_on_gpu_matches_numpy():
    B.use("numpy")
    B.seed(0)
    cpu_model = mlp(12, (8,), 3)
    x = np.random.default_rng(0).standard_normal((4, 12)).astype(np.float32)
    expected = cpu_model.forward(x)
    _cupy_or_skip()
    B.seed(0)
    gpu_model = mlp(12, (8,), 3)
    for (_, gp), (_, cp) in zip(gpu_model.named_parameters(), cpu_model.named_parameters()):
        gp.data = B.to_device(cp.data)
    out = gpu_model.forward(B.to_device(x))
    assert isinstance(out, B.xp.ndarray)
    np.testing.assert_allclose(B.to_host(out), expected, rtol=1e-4, atol=1e-5)
    loss_fn = SoftmaxCrossEntropy()
    loss_fn.forward(out, B.to_device(np.array([0, 1, 2, 0])))
    gpu_model.backward(loss_fn.backward())
    SGD(gpu_model.named_parameters()).step()


def _plain(function, *args):
    """Run a tinyitop.fused function on the plain-expression path (as on NumPy), on device arrays."""
    import tinyitop.fused as fused
    saved = fused.kernel
    fused.kernel = lambda name: None
    try:
        return function(*args)
    finally:
        fused.kernel = saved


def test_fused_kernels_equal_their_plain_expressions_on_gpu():
    """Each GPU aside of fused.py computes what the plain expression beside it does: SGD, BatchNorm
    (train and eval, forward and backward, running statistics), ReLU and the residual add, normalise."""
    _cupy_or_skip()
    import tinyitop.fused as fused
    from tinyitop.layers import BatchNorm2d, Parameter, ReLU
    rng = np.random.default_rng(3)
    dev = lambda *shape: B.to_device(rng.standard_normal(shape), dtype="float32")  # noqa: E731
    close = lambda a, b, **kw: np.testing.assert_allclose(B.to_host(a), B.to_host(b), **kw)  # noqa: E731
    for nesterov in (True, False):
        data, grad, velocity = dev(50), dev(50), dev(50)
        optimizers = []
        for _ in range(2):
            p = Parameter(data.copy())
            p.grad = grad
            optimizer = SGD([("p", p)], lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=5e-4)
            optimizer.velocity["p"] = velocity.copy()
            optimizers.append((p, optimizer))
        optimizers[0][1].step()
        _plain(optimizers[1][1].step)
        close(optimizers[0][0].data, optimizers[1][0].data, rtol=1e-5, atol=1e-6)
        close(optimizers[0][1].velocity["p"], optimizers[1][1].velocity["p"], rtol=1e-5, atol=1e-6)
    x, dout = dev(4, 3, 5, 5), dev(4, 3, 5, 5)
    layers = [BatchNorm2d(3), BatchNorm2d(3)]
    for layer in layers:
        layer.weight.data, layer.bias.data = abs(dev(3)) + 0.5, dev(3)
    layers[1].weight.data, layers[1].bias.data = layers[0].weight.data.copy(), layers[0].bias.data.copy()
    for training in (True, False):
        for layer in layers:
            layer.training = training
        close(layers[0].forward(x), _plain(layers[1].forward, x), rtol=1e-5, atol=1e-6)
        close(layers[0].running_mean, layers[1].running_mean, rtol=1e-6, atol=1e-7)
        close(layers[0].running_var, layers[1].running_var, rtol=1e-6, atol=1e-7)
        close(layers[0].backward(dout), _plain(layers[1].backward, dout), rtol=1e-4, atol=1e-5)
        close(layers[0].weight.grad, layers[1].weight.grad, rtol=1e-5, atol=1e-5)
    relus = [ReLU(), ReLU()]
    a, b = dev(6, 7), dev(6, 7)
    np.testing.assert_array_equal(B.to_host(relus[0].forward_add(a, b)), B.to_host(_plain(relus[1].forward_add, a, b)))
    np.testing.assert_array_equal(B.to_host(relus[0].backward(a)), B.to_host(_plain(relus[1].backward, a)))
    images = B.to_device(rng.integers(0, 256, (4, 3, 5, 5)).astype(np.uint8))
    mean, std = dev(1, 3, 1, 1), abs(dev(1, 3, 1, 1)) + 0.1
    close(fused.normalise(images, mean, std), (images.astype(mean.dtype) / mean.dtype.type(255) - mean) / std,
          rtol=1e-6)


@pytest.mark.parametrize("paths", [("csr", "gather"), ("dense", "dense+take")])
def test_sparse_resnet_step_on_gpu_matches_numpy(paths, monkeypatch):
    """A small sparse ResNet: one forward/backward/SGD step on the GPU equals the CPU's (float32)."""
    from tinyitop.blocks import BasicBlock
    from tinyitop.layers import Flatten, AvgPool2d, Conv2d, BatchNorm2d, Linear, ReLU, Sequential
    from tinyitop.models import sparsify
    monkeypatch.setattr("tinyitop.sparse_kernels.choose_paths", lambda weight, columns: paths)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 5, 8)

    def run():
        B.seed(0)
        model = Sequential(Conv2d(3, 8, 3, padding=1, bias=False), BatchNorm2d(8), ReLU(), BasicBlock(8, 16, stride=2),
                           AvgPool2d(4), Flatten(), Linear(16, 5))
        sparsify(model, 0.7)
        loss_fn = SoftmaxCrossEntropy()
        loss = loss_fn.forward(model.forward(B.to_device(x)), B.to_device(y))
        model.backward(loss_fn.backward())
        SGD(model.named_parameters()).step()
        return float(loss), {n: B.to_host(p.data) for n, p in model.named_parameters()}

    B.use("numpy")
    cpu_loss, cpu_params = run()
    _cupy_or_skip()
    gpu_loss, gpu_params = run()
    assert abs(gpu_loss - cpu_loss) < 1e-4
    for name in cpu_params:
        np.testing.assert_allclose(gpu_params[name], cpu_params[name], rtol=1e-3, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("kh,kw,stride,padding", [(3, 3, 1, 1), (3, 3, 2, 1), (1, 1, 2, 0), (5, 5, 3, 2)])
def test_im2col_kernels_equal_the_slice_loops_on_gpu(kh, kw, stride, padding):
    _cupy_or_skip()
    from tinyitop.im2col import col2im, im2col
    rng = np.random.default_rng(4)
    x = B.to_device(rng.standard_normal((3, 4, 9, 8)), dtype="float32")
    cols = im2col(x, kh, kw, stride, padding)
    np.testing.assert_array_equal(B.to_host(cols), B.to_host(_plain(im2col, x, kh, kw, stride, padding)))
    dcols = B.to_device(rng.standard_normal(cols.shape), dtype="float32")
    np.testing.assert_array_equal(B.to_host(col2im(dcols, x.shape, kh, kw, stride, padding)),
                                  B.to_host(_plain(col2im, dcols, x.shape, kh, kw, stride, padding)))


def test_cross_entropy_kernels_equal_the_plain_expressions_on_gpu():
    _cupy_or_skip()
    rng = np.random.default_rng(5)
    for n, k in ((128, 10), (64, 100)):
        logits = B.to_device(rng.standard_normal((n, k)) * 5, dtype="float32")
        labels = B.to_device(rng.integers(0, k, n))
        fused_loss, plain_loss = SoftmaxCrossEntropy(), SoftmaxCrossEntropy()
        got = fused_loss.forward(logits, labels)
        want = _plain(plain_loss.forward, logits, labels)
        np.testing.assert_allclose(B.to_host(got), B.to_host(want), rtol=1e-5)
        np.testing.assert_allclose(B.to_host(fused_loss.probs), B.to_host(plain_loss.probs), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(B.to_host(fused_loss.backward()), B.to_host(_plain(plain_loss.backward)),
                                   rtol=1e-5, atol=1e-8)


def test_fused_outputs_keep_the_input_layout_on_gpu():
    """A conv's output is channel-major memory seen as NCHW: BN, ReLU and the residual add write
    into arrays laid out the same way (fused.like), so the next conv's transposes stay views."""
    _cupy_or_skip()
    import tinyitop.fused as fused
    rng = np.random.default_rng(6)
    x = B.to_device(rng.standard_normal((3, 4, 5, 5)), dtype="float32").transpose(1, 0, 2, 3)  # (N, C, H, W) view
    channel = B.to_device(rng.standard_normal((1, 4, 1, 1)), dtype="float32")
    from tinyitop.layers import ReLU
    outputs = [ReLU().forward(x), fused.add_relu(x, x), fused.relu_backward(x, x), *fused.bn_normalise(
        x, channel, abs(channel), channel, channel), fused.bn_input_grad(x, x, channel, channel, channel, channel, 75)]
    for out in outputs:
        assert out.strides == x.strides and out.transpose(1, 0, 2, 3).flags.c_contiguous
