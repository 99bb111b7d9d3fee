"""The array backend, chosen once: NumPy + scipy.sparse on the CPU, CuPy + cupyx.scipy.sparse on a GPU.

Every other module does array math through `backend.xp` and `backend.sparse` (looked up at call
time, never imported by value) and moves data across the host/device boundary only through
`to_host` / `to_device` below. `TINYITOP_BACKEND` = numpy | cupy | unset (cupy if a GPU is usable).
"""
import os

import numpy as np

ALLOWED = ("numpy", "cupy")

name = None     # "numpy" or "cupy"
xp = None       # the array module: numpy or cupy
sparse = None   # the sparse module: scipy.sparse or cupyx.scipy.sparse


class BackendError(RuntimeError):
    """The requested backend is unknown or cannot run on this machine."""


def _load_cupy():
    """Import CuPy and check a CUDA device is usable; raise BackendError saying what is missing."""
    try:
        import cupy
        import cupyx.scipy.sparse as cupy_sparse
    except ImportError as err:
        raise BackendError(
            "TINYITOP_BACKEND=cupy but CuPy is not installed "
            f"({err}); install it with `pip install -r requirements-gpu.txt`, "
            "or set TINYITOP_BACKEND=numpy") from err
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDA driver missing or broken: CuPy raises its own runtime errors
        raise BackendError(f"TINYITOP_BACKEND=cupy but no usable CUDA device: {err}") from err
    if count < 1:
        raise BackendError("TINYITOP_BACKEND=cupy but CUDA reports no GPU")
    return cupy, cupy_sparse


def use(backend_name):
    """Select the backend by name ('numpy' or 'cupy'). Called once at import from the environment."""
    global name, xp, sparse
    if backend_name == "numpy":
        import scipy.sparse
        name, xp, sparse = "numpy", np, scipy.sparse
        _reset_rng()
    elif backend_name == "cupy":
        xp_mod, sparse_mod = _load_cupy()
        name, xp, sparse = "cupy", xp_mod, sparse_mod
        _reset_rng()
    else:
        raise BackendError(
            f"unknown backend {backend_name!r}: TINYITOP_BACKEND must be one of {', '.join(ALLOWED)} (or unset)")


def use_modules(backend_name, array_module, sparse_module):
    """Install explicit modules (tests use this to run the CuPy code path on a CPU stand-in)."""
    global name, xp, sparse
    name, xp, sparse = backend_name, array_module, sparse_module
    _reset_rng()


def _from_environment():
    requested = os.environ.get("TINYITOP_BACKEND", "").strip().lower()
    if requested:
        use(requested)
        return
    # Unset: CuPy if it imports and sees a GPU, else NumPy. This is the only automatic choice,
    # and `describe()` prints it so a run always says where it ran.
    try:
        use("cupy")
    except BackendError:
        use("numpy")


def describe():
    """One line saying which backend is active, for the top of every run's output."""
    if name == "cupy" and hasattr(xp, "cuda"):
        props = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)
        gpu = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"backend: cupy ({gpu})"
    return f"backend: {name}"


# ---- the only host <-> device copies -------------------------------------------------------

def to_host(array):
    """Device array -> NumPy array (a copy on CuPy; the same array on NumPy)."""
    if name == "numpy":
        return array
    return xp.asnumpy(array)  # sync point


def to_device(array, dtype=None):
    """NumPy array (or list) -> backend array, optionally cast to dtype."""
    return xp.asarray(array, dtype=dtype)


def scalar(value):
    """A 0-d device value -> Python float. A sync point on the GPU: call once per log interval."""
    return float(to_host(value))


# ---- random numbers -------------------------------------------------------------------------

_rng = None


def _reset_rng():
    global _rng
    _rng = None


def seed(value):
    """Seed the backend generator used for initialisation, masks and growth."""
    global _rng
    _rng = xp.random.default_rng(value)


def rng():
    """The backend's random Generator (seeded by `seed`, or 0 if never seeded)."""
    if _rng is None:
        seed(0)
    return _rng


def rng_state():
    """The generator's state as plain data for checkpoints, or None where the backend's generator
    does not expose it (then a resumed run draws new random numbers: exact resume is NumPy's)."""
    try:
        return rng().bit_generator.state
    except AttributeError:
        return None


def set_rng_state(state):
    if state is not None:
        rng().bit_generator.state = state


_from_environment()
