"""threads.over_channels: every channel exactly once, and the same bits whatever the thread count."""
import os
import subprocess
import sys

import numpy as np
import pytest

from tinyitop import backend as B
from tinyitop import threads
from tinyitop.im2col import col2im, im2col
from tinyitop.layers import AvgPool2d, BatchNorm1d, BatchNorm2d, MaxPool2d, ReLU
from tinyitop.models import sparsify, vgg16
from tinyitop.losses import SoftmaxCrossEntropy
from tinyitop.optim import SGD


@pytest.mark.parametrize("threads_env, channels, nbytes, blocks", [
    ("2", 7, threads.SPLIT_MIN_BYTES, 2),       # split: two blocks of 3 and 4 channels
    ("3", 7, threads.SPLIT_MIN_BYTES, 3),
    ("4", 3, threads.SPLIT_MIN_BYTES, 3),       # never more blocks than channels
    ("2", 7, threads.SPLIT_MIN_BYTES - 1, 1),   # too small to repay a thread hand-off
    ("1", 7, 10 * threads.SPLIT_MIN_BYTES, 1),  # threads off
    ("2", 1, 10 * threads.SPLIT_MIN_BYTES, 1),
])
def test_over_channels_covers_every_channel_once(monkeypatch, threads_env, channels, nbytes, blocks):
    monkeypatch.setenv("TINYITOP_THREADS", threads_env)
    seen = []
    threads.over_channels(lambda c: seen.append(c), channels, nbytes)
    assert len(seen) == blocks
    covered = sorted(i for c in seen for i in range(channels)[c])
    assert covered == list(range(channels))


def test_parallel_returns_results_in_order(monkeypatch):
    monkeypatch.setenv("TINYITOP_THREADS", "2")
    assert threads.parallel([lambda i=i: i * i for i in range(5)]) == [0, 1, 4, 9, 16]


def _layer_results(layer, x, dout, training=True):
    layer.train(training)
    y = B.to_host(layer.forward(x)).copy()
    dx = B.to_host(layer.backward(dout)).copy()
    grads = [B.to_host(p.grad).copy() for _, p in layer.named_parameters()]
    return y, dx, grads


def _same(a, b):
    ya, dxa, ga = a
    yb, dxb, gb = b
    assert np.array_equal(ya, yb) and np.array_equal(dxa, dxb)
    assert all(np.array_equal(p, q) for p, q in zip(ga, gb))


def _channel_major(rng, shape):
    n, c, h, w = shape
    return rng.standard_normal((c, n, h, w)).astype(np.float32).transpose(1, 0, 2, 3)


@pytest.mark.parametrize("make, training", [
    (lambda: BatchNorm2d(5), True), (lambda: BatchNorm2d(5), False), (lambda: ReLU(), True),
    (lambda: MaxPool2d(2), True), (lambda: AvgPool2d(2), True),
])
def test_conv_layers_same_bits_on_one_or_two_threads(monkeypatch, make, training):
    rng = np.random.default_rng(1)
    x = _channel_major(rng, (64, 5, 33, 32))       # ~1.3 MB: split on two threads; odd height for pooling
    pooled = isinstance(make(), (MaxPool2d, AvgPool2d))
    dout = _channel_major(rng, (64, 5, 16, 16) if pooled else x.shape)
    results = []
    for count in ("1", "2"):
        monkeypatch.setenv("TINYITOP_THREADS", count)
        B.seed(0)
        results.append(_layer_results(make(), x, dout, training))
    _same(*results)


def test_batchnorm1d_and_residual_relu_same_bits_on_one_or_two_threads(monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((512, 700)).astype(np.float32)
    dout = rng.standard_normal((512, 700)).astype(np.float32)
    a, b = _channel_major(rng, (64, 6, 32, 32)), _channel_major(rng, (64, 6, 32, 32))
    results = []
    for count in ("1", "2"):
        monkeypatch.setenv("TINYITOP_THREADS", count)
        bn, relu = BatchNorm1d(700), ReLU()
        results.append((_layer_results(bn, x, dout), B.to_host(relu.forward_add(a, b)).copy()))
    _same(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1])


def test_im2col_col2im_same_bits_on_one_or_two_threads(monkeypatch):
    x = _channel_major(np.random.default_rng(3), (32, 7, 32, 32))
    out = []
    for count in ("1", "2"):
        monkeypatch.setenv("TINYITOP_THREADS", count)
        cols = im2col(x, 3, 3, 1, 1)
        out.append((cols.copy(), col2im(cols, x.shape, 3, 3, 1, 1).copy()))
    assert np.array_equal(out[0][0], out[1][0]) and np.array_equal(out[0][1], out[1][1])


def test_sparse_vgg_training_same_bits_on_one_or_two_threads(monkeypatch):
    """A run resumed with another TINYITOP_THREADS (the sweep runner uses 1) continues the same run."""
    weights = []
    for count in ("1", "2"):
        monkeypatch.setenv("TINYITOP_THREADS", count)
        B.seed(0)
        model = sparsify(vgg16(10, width=0.125), 0.9, "erk")
        opt, loss = SGD(model.named_parameters(), lr=0.05, momentum=0.9, nesterov=True), SoftmaxCrossEntropy()
        rng = np.random.default_rng(0)
        for _ in range(2):
            x = B.to_device(rng.standard_normal((64, 3, 32, 32)), dtype="float32")
            loss.forward(model.forward(x), B.to_device(rng.integers(0, 10, 64)))
            model.backward(loss.backward())
            opt.step()
        weights.append([B.to_host(p.data).copy() for _, p in model.named_parameters()])
    assert all(np.array_equal(p, q) for p, q in zip(*weights))


@pytest.mark.parametrize("spins, threads_env, noted", [(True, "2", True), (False, "2", False), (True, "1", False)])
def test_the_log_notes_when_numpy_came_first_and_blas_threads_spin(monkeypatch, tmp_path, spins, threads_env, noted):
    import tinyitop
    from tinyitop.train import Config, train
    monkeypatch.setattr(tinyitop, "BLAS_SPINS", spins)
    monkeypatch.setenv("TINYITOP_THREADS", threads_env)
    lines = []
    train(Config(dataset="synthetic", hidden=(16,), epochs=1, limit_train=64, out=str(tmp_path / "run"), progress=False),
          log=lines.append)
    assert any("OPENBLAS_THREAD_TIMEOUT=4" in line for line in lines) == noted


def test_tinyitop_sets_the_blas_timeout_when_imported_before_numpy():
    code = "import os, tinyitop; print(os.environ['OPENBLAS_THREAD_TIMEOUT'], tinyitop.BLAS_SPINS)"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["4", "False"]
    first = subprocess.run([sys.executable, "-c", "import numpy, tinyitop; print(tinyitop.BLAS_SPINS)"],
                           capture_output=True, text=True, env=env, check=True).stdout
    assert first.strip() == "True"


@pytest.mark.parametrize("height", [32, 33])
def test_maxpool_gpu_aside_gives_the_plain_paths_bits(monkeypatch, height):
    """The GPU aside (one argmax over the windows: fewer launches) and the k*k strided views agree,
    ties included (all-zero windows after a ReLU send the gradient to the first position)."""
    from tinyitop import fused
    rng = np.random.default_rng(4)
    x = np.maximum(_channel_major(rng, (16, 6, height, 32)), 0)       # many ties at 0
    dout = _channel_major(rng, (16, 6, 16, 16))
    plain = _layer_results(MaxPool2d(2), x, dout)
    monkeypatch.setattr(fused, "gpu", lambda: True)
    _same(plain, _layer_results(MaxPool2d(2), x, dout))
