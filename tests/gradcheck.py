"""Gradient checking done right (cs231n): float64, centred differences, random upstream gradient,
relative error, every parameter, batches larger than one. Everything here asserts."""
import numpy as np

from tinyitop import backend as B

EPS = 1e-6
TOLERANCE = 1e-6


def relative_error(analytic, numeric):
    return np.max(np.abs(analytic - numeric) / np.maximum(np.abs(analytic) + np.abs(numeric), 1e-8))


def numeric_gradient(f, array, eps=EPS, max_entries=None, rng=None):
    """Centred differences of scalar f() w.r.t. entries of `array` (modified in place, restored)."""
    flat = array.reshape(-1)
    assert np.shares_memory(flat, array), "gradient check needs a view to perturb"
    entries = np.arange(flat.size)
    if max_entries is not None and flat.size > max_entries:
        entries = np.sort((rng or np.random.default_rng(0)).choice(flat.size, max_entries, replace=False))
    grad = np.zeros(entries.size)
    for j, i in enumerate(entries):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        grad[j] = (plus - minus) / (2 * eps)
    return entries, grad


def check_layer(layer, x, rng, max_entries=60, tolerance=TOLERANCE, params=None):
    """Check dx and every parameter gradient of `layer` at x (float64) under a random upstream."""
    assert x.dtype == np.float64 and x.shape[0] >= 2
    y = layer.forward(x)
    upstream = rng.standard_normal(y.shape)                 # never all ones
    dx = layer.backward(upstream.copy())
    analytic = {name: p.grad.reshape(-1).copy() for name, p in (params or layer.named_parameters())}
    loss = lambda: float(np.sum(layer.forward(x) * upstream))

    entries, numeric = numeric_gradient(loss, x, max_entries=max_entries, rng=rng)
    err = relative_error(dx.reshape(-1)[entries], numeric)
    assert err < tolerance, f"dx relative error {err:.2e}"
    checked = ["x"]
    for name, p in (params or layer.named_parameters()):
        entries, numeric = numeric_gradient(loss, p.data, max_entries=max_entries, rng=rng)
        err = relative_error(analytic[name][entries], numeric)
        assert err < tolerance, f"{name} relative error {err:.2e}"
        checked.append(name)
    return checked


def away_from_zero(rng, shape, margin=0.1):
    """Random values with |v| >= margin: no ReLU kink within a finite-difference step."""
    values = rng.standard_normal(shape)
    return np.sign(values) * (margin + np.abs(values))


def distinct_values(rng, shape):
    """All-distinct values, spaced by >> EPS: no max-pool tie can flip under a perturbation."""
    n = int(np.prod(shape))
    return (rng.permutation(n) / n * 4 - 2).reshape(shape).astype(np.float64)


def to_float64(module):
    module.astype(np.float64)
    return module


assert B  # backend is imported so tests share its state
