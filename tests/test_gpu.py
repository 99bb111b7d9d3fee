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
