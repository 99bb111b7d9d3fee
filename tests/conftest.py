import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from tinyitop import backend as B  # noqa: E402
import fake_cupy  # noqa: E402


@pytest.fixture(autouse=True)
def numpy_backend_by_default():
    """Every test starts on NumPy with a fixed seed and leaves the backend as it found it."""
    saved = (B.name, B.xp, B.sparse)
    B.use("numpy")
    B.seed(0)
    yield
    B.use_modules(*saved)


# TINYITOP_TEST_REAL_CUPY=1 (on a GPU machine) runs the `any_backend` tests on real CuPy in place
# of the stand-in: the same tests, on the GPU (benchmarks/gpu_session.sh does this).
REAL_CUPY = os.environ.get("TINYITOP_TEST_REAL_CUPY") == "1"


@pytest.fixture(params=["numpy", "fake_cupy"])
def any_backend(request):
    """Run a test on NumPy and on the CPU stand-in for CuPy (device arrays refuse host conversion)."""
    if request.param == "fake_cupy" and REAL_CUPY:
        B.use("cupy")
    elif request.param == "fake_cupy":
        if not fake_cupy.AVAILABLE:
            pytest.skip("the CuPy stand-in checks names against the installed CuPy: pip install cupy-cuda12x")
        B.use_modules("cupy", fake_cupy.xp, fake_cupy.sparse)
    B.seed(0)
    return request.param


@pytest.fixture
def host_rng():
    return np.random.default_rng(1234)


def pytest_configure(config):
    """`pytest -q` ends with why tests were skipped (as -rs does), not only how many."""
    if "s" not in config.option.reportchars and "a" not in config.option.reportchars:
        config.option.reportchars += "s"
