"""The array backend, chosen once: NumPy + scipy.sparse on the CPU, CuPy + cupyx.scipy.sparse on a GPU.

Every other module does array math through `backend.xp` and `backend.sparse` (looked up at call
time, never imported by value) and moves data across the host/device boundary only through
`to_host` / `to_device` below. `TINYITOP_BACKEND` = numpy | cupy | unset (cupy if a GPU is usable).
The choice is made at first use, not at import, so a bad value is one error line from the command
line (cli.py catches BackendError) rather than a traceback out of `import tinyitop`.
"""
import os

import numpy as np

ALLOWED = ("numpy", "cupy")

# `name` ("numpy" or "cupy"), `xp` (the array module) and `sparse` (scipy.sparse or
# cupyx.scipy.sparse) are module globals set by `use`; until then the module __getattr__ below
# chooses from the environment on first access.
_fallback_reason = None     # why an unset TINYITOP_BACKEND did not give CuPy, for describe()


class BackendError(RuntimeError):
    """The requested backend is unknown or cannot run on this machine."""


def _load_cupy():
    """Import CuPy and check it can really compute here; raise BackendError saying what is missing.

    A tiny dense reduction and a CSR product run once: they need the CUDA driver, NVRTC (CuPy
    compiles its kernels at run time) and cuSPARSE, each of which can be missing while
    `import cupy` works (e.g. cudaErrorInsufficientDriver when the driver is older than the runtime).
    """
    try:
        import cupy
        import cupyx.scipy.sparse as cupy_sparse
    except ImportError as err:
        raise BackendError(f"CuPy is not installed ({err}); install it with "
                           "`pip install -r requirements-gpu.txt`, or set TINYITOP_BACKEND=numpy") from None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise BackendError("CUDA reports no GPU; set TINYITOP_BACKEND=numpy")
        eye = cupy_sparse.csr_matrix(cupy.eye(2, dtype=cupy.float32))
        float((eye @ cupy.ones((2, 1), dtype=cupy.float32)).sum())     # sync point, once
    except BackendError:
        raise
    except Exception as err:  # CUDA driver, NVRTC or cuSPARSE missing or too old: CuPy's own error types
        raise BackendError(f"CuPy cannot use a GPU here ({type(err).__name__}: {err}). "
                           "Check the NVIDIA driver and requirements-gpu.txt, or set TINYITOP_BACKEND=numpy") from None
    return cupy, cupy_sparse


def use(backend_name):
    """Select the backend by name ('numpy' or 'cupy')."""
    if backend_name == "numpy":
        import scipy.sparse
        use_modules("numpy", np, scipy.sparse)
    elif backend_name == "cupy":
        try:
            use_modules("cupy", *_load_cupy())
        except BackendError as err:
            raise BackendError(f"TINYITOP_BACKEND=cupy but {err}") from None
    else:
        raise BackendError(f"unknown backend {backend_name!r}: TINYITOP_BACKEND must be one of "
                           f"{', '.join(ALLOWED)} (or unset to use CuPy when a GPU works, else NumPy)")


def use_modules(backend_name, array_module, sparse_module):
    """Install explicit modules (tests use this to run the CuPy code path on a CPU stand-in)."""
    globals().update(name=backend_name, xp=array_module, sparse=sparse_module)


def resolve():
    """The active backend's name, choosing it from TINYITOP_BACKEND first if nothing chose yet."""
    global _fallback_reason
    if "name" in globals():
        return globals()["name"]
    requested = os.environ.get("TINYITOP_BACKEND", "").strip().lower()
    if requested:
        use(requested)
    else:
        # Unset: CuPy if it imports and computes on a GPU, else NumPy. This is the only automatic
        # choice, and `describe()` prints it, with the reason when CuPy is installed but unusable.
        try:
            use_modules("cupy", *_load_cupy())
        except BackendError as err:
            import importlib.util
            if importlib.util.find_spec("cupy") is not None:
                _fallback_reason = str(err)
            use("numpy")
    return globals()["name"]


def __getattr__(attribute):
    """`backend.name`, `.xp`, `.sparse` before any choice: choose now (PEP 562 module attribute)."""
    if attribute in ("name", "xp", "sparse"):
        resolve()
        return globals()[attribute]
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


def describe():
    """One line saying which backend is active (and why not CuPy, if it is installed but unusable)."""
    if resolve() == "cupy" and hasattr(xp, "cuda"):
        props = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)
        gpu = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"backend: cupy ({gpu})"
    if name == "numpy" and _fallback_reason:
        return f"backend: numpy (TINYITOP_BACKEND unset; not cupy: {_fallback_reason})"
    return f"backend: {name}"


# ---- the only host <-> device copies -------------------------------------------------------

def to_host(array):
    """Device array -> NumPy array (a copy on CuPy; the same array on NumPy)."""
    if resolve() == "numpy":
        return array
    return xp.asnumpy(array)  # sync point


def to_device(array, dtype=None):
    """NumPy array (or list) -> backend array, optionally cast to dtype."""
    resolve()
    return xp.asarray(array, dtype=dtype)


def scalar(value):
    """A 0-d device value -> Python float. A sync point on the GPU: call once per log interval."""
    return float(to_host(value))


# ---- random numbers -------------------------------------------------------------------------
# One host NumPy generator for initial weights, masks and growth, whatever the backend: draws are
# made on the host and moved with to_device. They happen at initialisation and at topology updates
# (every Delta T iterations), never per step, so the copy costs nothing that matters. In return one
# seed gives the same weights and masks on NumPy and CuPy, and the state is plain data that a
# checkpoint restores exactly. (CuPy's own Generator has no permutation/choice, and its
# bit_generator.state() is a device pointer, not a restorable state.)

_rng = np.random.default_rng(0)


def seed(value):
    """Seed the generator used for initialisation, masks and growth."""
    global _rng
    _rng = np.random.default_rng(value)


def rng():
    """The host NumPy Generator (seeded by `seed`); move what it draws with `to_device`."""
    return _rng


def rng_state():
    """The generator's state as plain data (JSON-safe) for checkpoints."""
    return _rng.bit_generator.state


def set_rng_state(state):
    _rng.bit_generator.state = state
