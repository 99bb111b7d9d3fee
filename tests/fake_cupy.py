"""A CPU stand-in for CuPy, to test host/device discipline without a GPU.

`DeviceArray` wraps a NumPy array but behaves like `cupy.ndarray` where it matters:
- `numpy.asarray(device_array)` raises TypeError (CuPy: "Implicit conversion to a NumPy array
  is not allowed"), so a device array handed to SciPy or to host NumPy code fails loudly;
- mixing a host `numpy.ndarray` into device math raises TypeError (CuPy refuses numpy operands);
- the only ways across are `xp.asarray(host)` (to the device) and `xp.asnumpy(dev)` / `.get()`.
`sparse` mimics `cupyx.scipy.sparse.csr_matrix` on top of SciPy with the same checks.
"""
import types

import numpy as np
import scipy.sparse
from numpy.lib.mixins import NDArrayOperatorsMixin

_TRANSFER_IN = {"asarray", "array"}


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
        out = kwargs.get("out")
        result = getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs))
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key)])

    def __setitem__(self, key, value):
        self._a[_unwrap(key)] = _unwrap(value)

    def __getattr__(self, name):
        if name.startswith("__"):   # hide __array_interface__ & co., or NumPy would read the data
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if callable(attr):
            return lambda *args, **kwargs: _wrap(attr(*_unwrap(args), **_unwrap(kwargs)))
        return _wrap(attr)

    # In-place operators must keep the same object (NDArrayOperatorsMixin builds them from ufuncs
    # with out=, which returns our own wrapper above).
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


def _module_function(name, func):
    def call(*args, **kwargs):
        if name in _TRANSFER_IN:    # host -> device is explicit and allowed
            args = tuple(a._a if isinstance(a, DeviceArray) else a for a in args)
            return DeviceArray(np.array(func(*args, **_unwrap(kwargs))))
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))
    return call


class _Generator:
    """cupy.random.Generator look-alike: NumPy's generator, results on the device."""

    def __init__(self, seed):
        self._g = np.random.default_rng(seed)

    @property
    def bit_generator(self):
        return self._g.bit_generator

    def __getattr__(self, name):
        method = getattr(self._g, name)
        return lambda *args, **kwargs: _wrap(method(*_unwrap(args), **_unwrap(kwargs)))


class _ArrayModule(types.ModuleType):
    ndarray = DeviceArray

    def __init__(self):
        super().__init__("fake_cupy")
        self.random = types.SimpleNamespace(default_rng=_Generator)

    def __getattr__(self, name):
        attr = getattr(np, name)
        if callable(attr) and not isinstance(attr, type):
            return _module_function(name, attr)
        return attr

    @staticmethod
    def asnumpy(array):
        if not isinstance(array, DeviceArray):
            return np.asarray(array)
        return array._a.copy()


class csr_matrix:
    """cupyx.scipy.sparse.csr_matrix look-alike: device index/value arrays, device products."""

    format = "csr"

    def __init__(self, arg, shape=None):
        if isinstance(arg, tuple) and len(arg) == 3:
            data, indices, indptr = arg
            for part in (data, indices, indptr):
                if not isinstance(part, DeviceArray):
                    raise TypeError("csr_matrix parts must be device arrays, got " + type(part).__name__)
            self._m = scipy.sparse.csr_matrix((data._a, indices._a, indptr._a), shape=shape)
        elif scipy.sparse.issparse(arg):
            self._m = arg
        else:
            raise TypeError("unsupported csr_matrix argument " + type(arg).__name__)

    data = property(lambda self: DeviceArray(self._m.data))
    indices = property(lambda self: DeviceArray(self._m.indices))
    indptr = property(lambda self: DeviceArray(self._m.indptr))
    shape = property(lambda self: self._m.shape)
    nnz = property(lambda self: self._m.nnz)
    dtype = property(lambda self: self._m.dtype)
    T = property(lambda self: csr_matrix(self._m.T))

    def __matmul__(self, other):
        if not isinstance(other, DeviceArray):
            raise TypeError("sparse @ " + type(other).__name__ + ": operand must be a device array")
        return DeviceArray(np.asarray(self._m @ other._a))

    def dot(self, other):
        return self @ other

    def toarray(self):
        return DeviceArray(self._m.toarray())

    def transpose(self):
        return self.T

    def get(self):
        return self._m.copy()


sparse = types.SimpleNamespace(csr_matrix=csr_matrix,
                               issparse=lambda m: isinstance(m, csr_matrix))
xp = _ArrayModule()
