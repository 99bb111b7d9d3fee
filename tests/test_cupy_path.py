"""The CuPy code path, checked on a CPU: every CuPy name the library uses exists in the installed
CuPy (an AST scan of tinyitop/), and the whole training loop runs on the strict stand-in."""
import ast
import os
import sys

import numpy as np
import pytest

import fake_cupy
from tinyitop import backend as B
from tinyitop.metrics import TIMING_FIELDS, read_jsonl
from tinyitop.models import mlp
from tinyitop.topology import sparse_layers
from tinyitop.train import Config, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "tinyitop")
needs_cupy = pytest.mark.skipif(not fake_cupy.AVAILABLE, reason="CuPy not installed: pip install cupy-cuda12x")


def _chain(node):
    """Attribute chain as a list of names: B.xp.random.default_rng -> ['B', 'xp', 'random', 'default_rng']."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        names.append(node.id)
        return names[::-1]
    return None


def library_cupy_uses():
    """{'cupy.NAME' or 'cupyx.scipy.sparse.NAME': [file:line, ...]} for every use in tinyitop/.

    Array-module uses are `xp.NAME` (modules bind `xp = B.xp`; in backend.py xp is the global) and
    `B.xp.NAME`; sparse-module uses are `B.sparse.NAME`."""
    uses = {}
    for filename in sorted(os.listdir(PACKAGE)):
        if not filename.endswith(".py"):
            continue
        path = os.path.join(PACKAGE, filename)
        for node in ast.walk(ast.parse(open(path).read(), path)):
            chain = _chain(node) if isinstance(node, ast.Attribute) else None
            if not chain or isinstance(getattr(node, "ctx", None), ast.Store):
                continue
            if chain[:2] == ["B", "xp"]:
                rest, module = chain[2:], "cupy"
            elif chain[0] == "xp":
                rest, module = chain[1:], "cupy"
            elif chain[:2] == ["B", "sparse"]:
                rest, module = chain[2:], "cupyx.scipy.sparse"
            else:
                continue
            if rest:
                uses.setdefault(".".join([module] + rest), set()).add(f"{filename}:{node.lineno}")
    # Keep only the longest chain per use site (xp.random.default_rng, not also xp.random).
    longest = {}
    for name, sites in uses.items():
        if not any(other.startswith(name + ".") and sites & other_sites for other, other_sites in uses.items()):
            longest[name] = sorted(sites)
    return longest


def _exists_in_cupy(dotted):
    import importlib
    module_name, *attributes = dotted.split(".") if not dotted.startswith("cupyx") else (
        ["cupyx.scipy.sparse"] + dotted[len("cupyx.scipy.sparse."):].split("."))
    obj = importlib.import_module(module_name)
    for attribute in attributes:
        if not hasattr(obj, attribute):
            return False
        obj = getattr(obj, attribute)
    return True


@needs_cupy
def test_every_cupy_name_the_library_uses_exists_in_cupy():
    uses = library_cupy_uses()
    assert len(uses) > 30                          # the scan sees the library's array code
    assert "cupy.einsum" in uses and "cupyx.scipy.sparse.csr_matrix" in uses
    missing = {name: sites for name, sites in uses.items() if not _exists_in_cupy(name)}
    assert not missing, f"not in CuPy {fake_cupy.VERSION}: {missing}"


@needs_cupy
def test_the_scan_catches_a_name_cupy_lacks(tmp_path, monkeypatch):
    """The scan can fail: a library line calling NumPy-only names is reported."""
    (tmp_path / "bad.py").write_text("from tinyitop import backend as B\n"
                                     "def f(x):\n    xp = B.xp\n    return xp.insert(x, 0, 1), B.xp.random.default_rng(0).permutation(3)\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", str(tmp_path))
    uses = library_cupy_uses()
    assert "cupy.insert" in uses and not _exists_in_cupy("cupy.insert")   # NumPy has it, CuPy does not
    assert "cupy.random.default_rng" in uses                                # flagged by the host-only test


def test_library_draws_random_numbers_on_the_host_only():
    """No device generator anywhere: all draws come from backend.rng(), a host NumPy Generator."""
    assert not [name for name in library_cupy_uses() if name.startswith("cupy.random")]
    assert isinstance(B.rng(), np.random.Generator)


@needs_cupy
def test_stand_in_has_only_cupy_names():
    xp, sparse = fake_cupy.xp, fake_cupy.sparse
    with pytest.raises(AttributeError):
        xp.insert                                                   # NumPy has it; CuPy does not
    generator = xp.random.default_rng(0)
    for missing in ("permutation", "choice", "shuffle"):
        with pytest.raises(AttributeError):
            getattr(generator, missing)
    assert callable(generator.bit_generator.state)                # a method, as in CuPy
    assert generator.integers(0, 5, size=3).shape == (3,)
    csr = sparse.csr_matrix((xp.asarray(np.ones(2, np.float32)), xp.asarray(np.array([0, 1], np.int32)),
                             xp.asarray(np.array([0, 1, 2], np.int32))), shape=(2, 2))
    assert csr.T.format == "csc" and csr.T.T.format == "csr"
    with pytest.raises(AttributeError):
        csr.tobsr_fast                                             # no such cupyx method
    with pytest.raises(ValueError, match="Only bool, float32"):
        sparse.csr_matrix((xp.asarray(np.ones(2, np.int64)), csr.indices, csr.indptr), shape=(2, 2))
    with pytest.raises(NotImplementedError):
        xp.argsort(xp.asarray(np.arange(3)), kind="quicksort")
    assert xp.argsort(xp.asarray(np.arange(3)), kind="stable").shape == (3,)   # CuPy accepts it
    with pytest.raises(AttributeError):
        sparse.lil_matrix                                          # cupyx.scipy.sparse has no LIL


def test_same_seed_gives_the_same_masks_and_weights_on_both_backends(any_backend):
    B.seed(7)
    model = mlp(48, (32, 16), 10, sparsity=0.9)
    got = {n: (B.to_host(layer.weight.flat_positions()), B.to_host(layer.weight.data))
           for n, layer in sparse_layers(model).items()}
    B.use("numpy")
    B.seed(7)
    reference = mlp(48, (32, 16), 10, sparsity=0.9)
    for name, layer in sparse_layers(reference).items():
        np.testing.assert_array_equal(got[name][0], layer.weight.flat_positions())
        np.testing.assert_array_equal(got[name][1], layer.weight.data)


@pytest.fixture
def stand_in():
    """The CuPy code path on the strict CPU stand-in (conftest restores NumPy afterwards)."""
    if not fake_cupy.AVAILABLE:
        pytest.skip("CuPy not installed: pip install cupy-cuda12x")
    B.use_modules("cupy", fake_cupy.xp, fake_cupy.sparse)
    B.seed(0)


def _config(tmp_path, name, **overrides):
    settings = dict(dataset="synthetic", hidden=(24, 12), epochs=2, update_interval=8, lr=0.05, sparsity=0.8,
                    batch_size=64, limit_train=512, out=str(tmp_path / name), progress=False)
    settings.update(overrides)
    return Config(**settings)


@pytest.mark.parametrize("method, growth", [("dense", None), ("static", None), ("set", "random"),
                                            ("set", "unexplored"), ("rigl", "gradient"), ("gmp", None),
                                            ("snip", None), ("snip-set", "random"), ("lth", None)])
def test_every_method_trains_on_the_stand_in(tmp_path, stand_in, method, growth):
    run = train(_config(tmp_path, method, method=method, growth=growth,
                        sparsity=0.0 if method == "dense" else 0.8), log=lambda *_: None)
    rows = read_jsonl(str(tmp_path / method / "metrics.jsonl"))
    assert len(rows) == 2 and all(np.isfinite(r["train_loss"]) for r in rows)
    if growth is not None:                                          # explored beyond its active weights
        active = sum(rows[-1]["nnz_per_layer"].values())
        numel = sum(n / rows[-1]["density_per_layer"][name] for name, n in rows[-1]["nnz_per_layer"].items())
        assert run.summary["final_rs"] > active / numel + 0.01
    assert isinstance(next(iter(run.model.named_parameters()))[1].data, fake_cupy.DeviceArray)


def test_set_checkpoint_resume_and_plots_on_the_stand_in(tmp_path, stand_in):
    """Killed after epoch 1 and resumed: the same metrics and updates as an uninterrupted run, on the
    stand-in whose generator has only CuPy's methods; then the figures."""
    from tinyitop import plots
    train(_config(tmp_path, "a", epochs=3), log=lambda *_: None)

    class Killed(Exception):
        pass

    def crash(epoch):
        if epoch == 1:
            raise Killed()
    with pytest.raises(Killed):
        train(_config(tmp_path, "b", epochs=3), log=lambda *_: None, on_epoch_end=crash)
    run = train(_config(tmp_path, "b", epochs=3, resume=True), log=lambda *_: None)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]
    assert strip(read_jsonl(str(tmp_path / "a" / "metrics.jsonl"))) == strip(read_jsonl(str(tmp_path / "b" / "metrics.jsonl")))
    assert read_jsonl(str(tmp_path / "a" / "updates.jsonl")) == read_jsonl(str(tmp_path / "b" / "updates.jsonl"))
    assert os.path.exists(plots.training(str(tmp_path / "b")))
    assert os.path.exists(plots.exploration(run.model, run.exploration, run.data.image_shape,
                                            str(tmp_path / "b" / "exploration.png")))
