"""A CPU stand-in for CuPy that is as strict as CuPy, to test the CuPy code path without a GPU.

`pip install cupy-cuda12x` imports on a machine without a GPU: its namespace is there, only
allocation fails. The stand-in computes with NumPy/SciPy but exposes **only names that the
installed CuPy has**, read from it at import (nothing typed by hand), so code that calls a NumPy
name CuPy lacks fails here as it would on a GPU:
- `xp.NAME` exists only if `cupy.NAME` does; array methods only if `cupy.ndarray` has them;
- `xp.random.default_rng(...)` has only `cupy.random.Generator`'s methods (no permutation, choice
  or shuffle), and its `bit_generator.state` is a *method*, as CuPy's is;
- `sparse` has only `cupyx.scipy.sparse`'s names; a CSR's `.T` is a CSC matrix, and each matrix
  has only its cupyx class's methods; CSR values must be bool/float/complex, as cupyx requires;
- `sort`/`argsort` take `kind` None or "stable" only (CuPy's sorts are stable; any other kind raises), and `numpy.asarray(device_array)` raises
  TypeError, as does mixing a host `numpy.ndarray` into device math; the only ways across are
  `xp.asarray(host)` and `xp.asnumpy(dev)` / `.get()`;
- elementwise results are C-contiguous whatever the inputs' layout, as CuPy's are (NumPy keeps
  the inputs' layout), so a layout the CuPy path would lose is lost here too.
Without CuPy installed, AVAILABLE is False and the tests that use the stand-in skip.
"""
import types

import numpy as np
import scipy.sparse
from numpy.lib.mixins import NDArrayOperatorsMixin

try:
    import cupy as _cupy
    import cupyx.scipy.sparse as _cupy_sparse
    AVAILABLE = True
except ImportError:       # the stand-in checks against real CuPy or not at all
    AVAILABLE = False


def _public(obj):
    return {n for n in dir(obj) if not n.startswith("_")}


if AVAILABLE:
    MODULE_NAMES = _public(_cupy)
    NDARRAY_NAMES = _public(_cupy.ndarray)
    GENERATOR_NAMES = _public(_cupy.random.Generator)
    RANDOM_NAMES = _public(_cupy.random)
    SPARSE_NAMES = _public(_cupy_sparse)
    # A compressed matrix's data/indices/indptr are set in __init__, so dir() of the class lacks them.
    _COMPRESSED_ATTRIBUTES = {"data", "indices", "indptr"}
    CSR_NAMES = _public(_cupy_sparse.csr_matrix) | _COMPRESSED_ATTRIBUTES
    CSC_NAMES = _public(_cupy_sparse.csc_matrix) | _COMPRESSED_ATTRIBUTES
    VERSION = _cupy.__version__
else:
    MODULE_NAMES = NDARRAY_NAMES = GENERATOR_NAMES = RANDOM_NAMES = SPARSE_NAMES = CSR_NAMES = CSC_NAMES = set()
    VERSION = None

_TRANSFER_IN = {"asarray", "array"}

# How many kernels CuPy would launch for what the stand-in saw (benchmarks/bench_launches.py reads
# it): every operation that writes a new or given array counts one; a view (a basic slice, a
# reshape, a transpose: the result's memory is an operand's) counts none, as it launches nothing.
LAUNCHES = {"count": 0}
_NO_KERNEL = {"empty", "empty_like"}     # allocation only


def _counted(result, operands=()):
    raw = result[0] if isinstance(result, tuple) and result else result
    bases = [o for o in operands if isinstance(o, np.ndarray)]
    is_view = isinstance(raw, np.ndarray) and any(np.may_share_memory(raw, b) for b in bases)
    LAUNCHES["count"] += 0 if is_view else 1
    return result
_NO_KIND = {"sort", "argsort"}     # cupy.sort(a, axis=-1, kind=None): None or "stable", else it raises


def _unwrap(value):
    if isinstance(value, DeviceArray):
        return value._a
    if isinstance(value, np.ndarray) and value.ndim > 0:
        raise TypeError(f"Unsupported type {type(value)}: a host numpy.ndarray was mixed into device "
                        "math (use backend.to_device first)")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(_unwrap(value.start), _unwrap(value.stop), _unwrap(value.step))
    return value


def _wrap(value):
    if isinstance(value, np.ndarray):
        return DeviceArray(value)
    if isinstance(value, np.generic):       # CuPy reductions return 0-d device arrays, not scalars
        return DeviceArray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


class DeviceArray(NDArrayOperatorsMixin):
    __slots__ = ("_a",)

    def __init__(self, array):
        self._a = array

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc.__name__ not in MODULE_NAMES:
            raise TypeError(f"CuPy has no ufunc {ufunc.__name__!r}")
        out = kwargs.get("out")
        if method == "__call__" and out is None:
            kwargs = {**kwargs, "order": "C"}       # CuPy's elementwise results are C-contiguous
        result = _counted(getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs)))
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        if func.__name__ not in MODULE_NAMES:     # CuPy dispatches only to functions it has
            raise TypeError(f"numpy.{func.__name__} on a device array: CuPy has no {func.__name__!r}")
        raw = _unwrap(args)
        return _wrap(_counted(func(*raw, **_unwrap(kwargs)), () if "out" in kwargs else raw))

    def __getitem__(self, key):
        return _wrap(_counted(self._a[_unwrap(key)], [self._a]))

    def __setitem__(self, key, value):
        self._a[_unwrap(key)] = _unwrap(value)
        _counted(None)

    def __getattr__(self, name):
        if name.startswith("__"):   # hide __array_interface__ & co., or NumPy would read the data
            raise AttributeError(name)
        if name not in NDARRAY_NAMES:
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
        attr = getattr(self._a, name)
        if callable(attr):
            def method(*args, **kwargs):
                return _wrap(_counted(attr(*_unwrap(args), **_unwrap(kwargs)), [self._a]))
            return _without_kind(name, method) if name in _NO_KIND else method
        return _wrap(_counted(attr, [self._a]) if isinstance(attr, np.ndarray) else attr)   # .T: a view

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (DeviceArray(row) if isinstance(row, np.ndarray) else DeviceArray(np.asarray(row))
                for row in self._a)

    def __float__(self):        # CuPy allows these on size-1 arrays (a synchronising copy)
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __bool__(self):
        return bool(self._a)

    def __index__(self):
        return self._a.__index__()

    def __repr__(self):
        return f"DeviceArray({self._a!r})"

    def get(self):
        return self._a.copy()


def _without_kind(name, call):
    def checked(*args, kind=None, **kwargs):
        if kind not in (None, "stable"):     # CuPy 14.2 on an H200 accepted "stable" (docs/SPEED.md)
            raise NotImplementedError(f"cupy.{name}: kind={kind!r} is not supported (only None or 'stable')")
        return call(*args, **kwargs)
    return checked


def _module_function(name, func):
    def call(*args, **kwargs):
        if name in _TRANSFER_IN:    # host -> device is explicit and allowed
            args = tuple(a._a if isinstance(a, DeviceArray) else a for a in args)
            return DeviceArray(_counted(np.array(func(*args, **_unwrap(kwargs)))))
        raw = _unwrap(args)
        if isinstance(func, np.ufunc) and "out" not in kwargs:
            kwargs = {**kwargs, "order": "C"}       # as in DeviceArray.__array_ufunc__
        if name in _NO_KERNEL:
            return _wrap(func(*raw, **_unwrap(kwargs)))
        return _wrap(_counted(func(*raw, **_unwrap(kwargs)), () if "out" in kwargs else raw))
    return _without_kind(name, call) if name in _NO_KIND else call


class _BitGenerator:
    """CuPy's bit generators (XORWOW, ...): `state()` is a method returning a device pointer."""

    def __init__(self, generator):
        self._generator = generator

    def state(self):
        return id(self._generator)        # an opaque number, as CuPy's device pointer is


class _Generator:
    """cupy.random.Generator look-alike: only CuPy's methods, results on the device."""

    def __init__(self, seed):
        self._g = np.random.default_rng(seed)
        self.bit_generator = _BitGenerator(self._g)

    def __getattr__(self, name):
        if name not in GENERATOR_NAMES:
            raise AttributeError(f"'cupy.random.Generator' object has no attribute {name!r}")
        method = getattr(self._g, name)
        return lambda *args, **kwargs: _wrap(method(*_unwrap(args), **_unwrap(kwargs)))


class _Namespace(types.SimpleNamespace):
    """A module whose names are limited to those of the real CuPy module it stands for."""

    def __init__(self, module_name, allowed, **implemented):
        super().__init__(**implemented)
        object.__setattr__(self, "_module_name", module_name)
        object.__setattr__(self, "_allowed", allowed)
        unknown = set(implemented) - allowed
        assert not unknown, f"stand-in defines names {module_name} lacks: {sorted(unknown)}"

    def __getattr__(self, name):
        if name.startswith("__") or name not in self._allowed:
            raise AttributeError(f"module {self._module_name!r} has no attribute {name!r}")
        raise NotImplementedError(f"{self._module_name}.{name} exists in CuPy but not in the stand-in yet")


class _ArrayModule(types.ModuleType):
    ndarray = DeviceArray

    def __init__(self):
        super().__init__("fake_cupy")
        self.random = _Namespace("cupy.random", RANDOM_NAMES, default_rng=_Generator)

    def __getattr__(self, name):
        if name not in MODULE_NAMES:
            raise AttributeError(f"module 'cupy' has no attribute {name!r}")
        attr = getattr(np, name)
        if callable(attr) and not isinstance(attr, type):
            return _module_function(name, attr)
        return attr

    @staticmethod
    def asnumpy(array):
        if not isinstance(array, DeviceArray):
            return np.asarray(array)
        return array._a.copy()


class _Compressed:
    """Shared by the CSR/CSC look-alikes: device index/value arrays, device products."""

    def __init__(self, matrix):
        self._m = matrix

    data = property(lambda self: DeviceArray(self._m.data))
    indices = property(lambda self: DeviceArray(self._m.indices))
    indptr = property(lambda self: DeviceArray(self._m.indptr))
    shape = property(lambda self: self._m.shape)
    nnz = property(lambda self: self._m.nnz)
    dtype = property(lambda self: self._m.dtype)

    def __matmul__(self, other):
        if not isinstance(other, DeviceArray):
            raise TypeError("sparse @ " + type(other).__name__ + ": operand must be a device array")
        return DeviceArray(_counted(np.asarray(self._m @ other._a)))

    def dot(self, other):
        return self @ other

    def toarray(self):
        return DeviceArray(self._m.toarray())

    def get(self):
        return self._m.copy()


class csr_matrix(_Compressed):
    """cupyx.scipy.sparse.csr_matrix look-alike."""

    format = "csr"

    def __init__(self, arg, shape=None):
        if isinstance(arg, tuple) and len(arg) == 3:
            data, indices, indptr = arg
            for part in (data, indices, indptr):
                if not isinstance(part, DeviceArray):
                    raise TypeError("csr_matrix parts must be device arrays, got " + type(part).__name__)
            if data.dtype.char not in "?fdFD":      # cupyx: no integer-valued sparse matrices
                raise ValueError("Only bool, float32, float64, complex64 and complex128 are supported")
            super().__init__(scipy.sparse.csr_matrix((data._a, indices._a, indptr._a), shape=shape))
        elif isinstance(arg, scipy.sparse.csr_matrix):
            super().__init__(arg)
        else:
            raise TypeError("unsupported csr_matrix argument " + type(arg).__name__)

    T = property(lambda self: csc_matrix(self._m.T.tocsc()))     # cupyx: the transpose of CSR is CSC

    def transpose(self):
        return self.T


class csc_matrix(_Compressed):
    """cupyx.scipy.sparse.csc_matrix look-alike (what a CSR's .T is in cupyx)."""

    format = "csc"
    T = property(lambda self: csr_matrix(self._m.T.tocsr()))

    def transpose(self):
        return self.T


# The look-alikes may define only what the real cupyx classes have (inherited helpers included).
for _cls, _names in ((csr_matrix, CSR_NAMES), (csc_matrix, CSC_NAMES)):
    _extra = {n for n in dir(_cls) if not n.startswith("_")} - _names
    assert not (AVAILABLE and _extra), f"stand-in {_cls.__name__} defines names cupyx lacks: {sorted(_extra)}"

sparse = _Namespace("cupyx.scipy.sparse", SPARSE_NAMES, csr_matrix=csr_matrix, csc_matrix=csc_matrix,
                    issparse=lambda m: isinstance(m, _Compressed)) if AVAILABLE else None
# Without CuPy there is nothing to be strict against: no stand-in, and its tests skip (conftest).
xp = _ArrayModule() if AVAILABLE else None
