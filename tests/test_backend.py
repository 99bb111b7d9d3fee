"""Backend selection is loud, and array code never converts device arrays implicitly."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fake_cupy
from tinyitop import SGD, SoftmaxCrossEntropy, backend as B
from tinyitop.blocks import BasicBlock, Bottleneck
from tinyitop.layers import AvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from tinyitop.models import mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import_with(value):
    env = dict(os.environ, TINYITOP_BACKEND=value, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", "import tinyitop; print(tinyitop.backend.name)"],
                          env=env, capture_output=True, text=True)


def test_bad_backend_name_is_an_error_naming_the_choices():
    result = _import_with("tensorflow")
    assert result.returncode != 0
    assert "unknown backend 'tensorflow'" in result.stderr and "numpy, cupy" in result.stderr


def test_numpy_backend_by_name():
    result = _import_with("NumPy ")
    assert result.returncode == 0 and result.stdout.strip() == "numpy"


def _gpu_available():
    try:
        B.use("cupy")
        return True
    except B.BackendError:
        return False
    finally:
        B.use("numpy")


@pytest.mark.skipif(_gpu_available(), reason="a GPU is present: the no-GPU error cannot happen")
def test_cupy_without_gpu_says_what_is_missing():
    with pytest.raises(B.BackendError, match="TINYITOP_BACKEND=cupy but CuPy (is not installed|cannot use a GPU)"):
        B.use("cupy")
    result = _import_with("cupy")
    assert result.returncode != 0 and "TINYITOP_BACKEND=cupy" in result.stderr


def test_host_device_round_trip(any_backend):
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    dev = B.to_device(host)
    assert isinstance(dev, B.xp.ndarray)
    back = B.to_host(dev * 2)
    assert isinstance(back, np.ndarray) and back.dtype == np.float32
    np.testing.assert_array_equal(back, host * 2)


@pytest.mark.skipif(not fake_cupy.AVAILABLE, reason="CuPy not installed: pip install cupy-cuda12x")
def test_stand_in_refuses_implicit_conversion():
    dev = fake_cupy.xp.asarray(np.ones(3))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(dev)
    with pytest.raises(TypeError):
        dev + np.ones(3)


def _step(model, x_shape, num_classes):
    """One forward + backward + SGD step, entirely on the active backend."""
    x = B.to_device(np.random.default_rng(0).standard_normal(x_shape), dtype="float32")
    labels = B.to_device(np.arange(x_shape[0]) % num_classes)
    loss_fn = SoftmaxCrossEntropy()
    opt = SGD(model.named_parameters(), lr=0.05)
    losses = []
    for _ in range(3):
        loss = loss_fn.forward(model.forward(x), labels)
        model.backward(loss_fn.backward())
        opt.step()
        losses.append(B.scalar(loss))   # the one explicit sync per step in this test
    return losses


def test_mlp_step_runs_on_either_backend(any_backend):
    losses = _step(mlp(12, (8,), 3), (4, 3, 2, 2), 3)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_small_resnet_step_runs_on_either_backend(any_backend):
    model = Sequential([("conv1", Conv2d(3, 4, 3, padding=1, bias=False)), ("bn1", BatchNorm2d(4)),
                        ("relu", ReLU()), ("pool", MaxPool2d(2)), ("layer1", BasicBlock(4, 8, 2)),
                        ("layer2", Bottleneck(8, 2, 1)), ("avgpool", AvgPool2d(2)), ("flatten", Flatten()),
                        ("linear", Linear(8, 3, bias=False))])
    losses = _step(model, (4, 3, 8, 8), 3)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_import_is_light():
    """`import tinyitop` loads NumPy/SciPy only: matplotlib with the plots, CuPy only when asked for."""
    code = "import sys, tinyitop; print(sorted(m for m in ('matplotlib', 'tqdm', 'cupy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, TINYITOP_BACKEND="numpy", PYTHONPATH=ROOT))
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def _run(args, **env):
    environment = {k: v for k, v in os.environ.items() if k != "TINYITOP_BACKEND"}
    environment.update(env, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable] + args, capture_output=True, text=True, env=environment, timeout=300)


no_gpu = pytest.mark.skipif(_gpu_available(), reason="a GPU works here: the no-GPU paths cannot happen")
needs_cupy = pytest.mark.skipif(not fake_cupy.AVAILABLE, reason="CuPy not installed: pip install cupy-cuda12x")


@no_gpu
def test_cupy_requested_without_a_usable_gpu_is_one_error_line(tmp_path):
    result = _run(["-m", "tinyitop", "train", "--dataset", "synthetic", "--epochs", "1", "--out", str(tmp_path)],
                  TINYITOP_BACKEND="cupy")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: TINYITOP_BACKEND=cupy but CuPy ")
    assert "TINYITOP_BACKEND=numpy" in lines[0]                     # says what to do


@no_gpu
@needs_cupy
def test_unset_backend_with_cupy_but_no_gpu_runs_on_numpy_and_says_why(tmp_path):
    result = _run([os.path.join(ROOT, "demos", "mlp_cifar10.py"), "--quick", "--dataset", "synthetic",
                   "--out", str(tmp_path / "demo"), "--no-progress"])
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("backend: numpy (TINYITOP_BACKEND unset; not cupy: CuPy cannot use a GPU here")


def test_bad_backend_name_is_one_line_even_for_help():
    result = _run(["-m", "tinyitop", "train", "--help"], TINYITOP_BACKEND="bogus")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("error: unknown backend 'bogus': TINYITOP_BACKEND must be one of numpy, cupy "
                                     "(or unset to use CuPy when a GPU works, else NumPy)")


def test_activations_stay_in_the_layout_the_next_product_wants():
    """Conv -> BN -> ReLU keeps the conv's channel-major memory (fused.like), so the next conv's
    im2col reads (C, N, H, W) and the backward's (O, N*OH*OW) without a transpose copy; a linear
    layer's (out, N) memory likewise reaches the next linear layer as its contiguous (in, N).
    On NumPy here; on CuPy the fused kernels do it (tests/test_gpu.py, on a GPU). The stand-in runs
    the plain expressions, whose results CuPy would make C-contiguous, so it is not checked there."""
    from tinyitop.layers import BatchNorm2d, Conv2d, ReLU
    from tinyitop.sparse import SparseLinear
    rng = np.random.default_rng(0)
    x = B.to_device(rng.standard_normal((2, 3, 6, 6)), dtype="float32")
    conv, bn, relu = Conv2d(3, 4, 3, padding=1), BatchNorm2d(4), ReLU()
    y = relu.forward(bn.forward(conv.forward(x)))
    assert y.transpose(1, 0, 2, 3).flags.c_contiguous                  # (C, N, H, W) memory
    dout = B.to_device(rng.standard_normal(y.shape), dtype="float32").transpose(1, 0, 2, 3).copy().transpose(1, 0, 2, 3)
    assert bn.backward(relu.backward(dout)).transpose(1, 0, 2, 3).flags.c_contiguous
    fc1, fc2 = SparseLinear(5, 4, density=0.5), SparseLinear(4, 3, density=0.5)
    h = relu.forward(fc1.forward(B.to_device(rng.standard_normal((6, 5)), dtype="float32")))
    assert h.T.flags.c_contiguous                                       # (in, N) for fc2
    fc2.forward(h)
