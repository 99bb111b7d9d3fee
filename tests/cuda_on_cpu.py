"""Run a `tinyitop.fused` CUDA body on the CPU, without a GPU: the host C compiler builds it inside
the loop an ElementwiseKernel runs (`i` over the loop, each non-raw argument read or written at
element i, or one value for all i when a scalar is given; a `raw` argument is a flat pointer), with
T = double. Tests use it to check a kernel's arithmetic against the NumPy expression it replaces.
"""
import ctypes
import shutil
import subprocess

import numpy as np
import pytest

# CuPy's type names in the kernels -> (C type, NumPy dtype). T is the float type; I an index type.
C_TYPES = {"T": ("double", np.float64), "I": ("long long", np.int64), "int32": ("int", np.int32),
           "bool": ("unsigned char", np.uint8)}


def _params(text, output):
    """'raw T x, int32 n' -> [(name, C type, dtype, raw, output)]"""
    params = []
    for part in text.split(","):
        words = part.split()
        raw = words[0] == "raw"
        c_type, dtype = C_TYPES[words[-2]]
        params.append((words[-1], c_type, dtype, raw, output))
    return params


def compile_body(name, tmp_path):
    """The fused kernel `name` as a Python function call(*inputs, *outputs) writing into the outputs
    (NumPy arrays of the given dtypes); the loop runs over the first non-raw array output."""
    from tinyitop.fused import _CUDA
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to run the CUDA bodies on the CPU")
    inputs, outputs, body = _CUDA[name]
    params = _params(inputs, False) + _params(outputs, True)
    args, defines = [], []
    for pname, c_type, _, raw, output in params:
        const = "" if output else "const "
        if raw:
            args.append(f"{const}{c_type}* {pname}")
        else:   # element i of an array (stride 1) or the one value of a scalar (stride 0)
            args += [f"{const}{c_type}* {pname}_p", f"ptrdiff_t {pname}_s"]
            defines.append(f"#define {pname} ({pname}_p[i * {pname}_s])")
    source = ("#include <math.h>\n#include <stddef.h>\ntypedef double T;\n" + "\n".join(defines) +
              f"\nvoid run({', '.join(args)}, ptrdiff_t size) {{\n"
              f"  for (ptrdiff_t i = 0; i < size; ++i) {{\n{body}\n  }}\n}}\n")
    (tmp_path / f"{name}.c").write_text(source)
    library = tmp_path / f"{name}.so"
    subprocess.run([compiler, "-O1", "-shared", "-fPIC", "-Wall", "-Werror", "-o", str(library),
                    str(tmp_path / f"{name}.c"), "-lm"], check=True, capture_output=True)
    function = ctypes.CDLL(str(library)).run

    def call(*values):
        assert len(values) == len(params), f"{name} takes {len(params)} arguments"
        c_args, keep, size = [], [], None
        for value, (pname, _, dtype, raw, output) in zip(values, params):
            if output:
                assert isinstance(value, np.ndarray) and value.dtype == dtype and value.flags.c_contiguous, pname
                array = value
            else:
                array = np.ascontiguousarray(value, dtype=dtype).reshape(-1)
            keep.append(array)
            c_args.append(ctypes.c_void_p(array.ctypes.data))
            if not raw:
                c_args.append(ctypes.c_ssize_t(0 if np.ndim(value) == 0 else 1))
                if output and size is None:
                    size = array.size
        function(*c_args, ctypes.c_ssize_t(size))
    return call
