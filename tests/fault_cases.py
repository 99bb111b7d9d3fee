"""Shared by the fault-matrix tests: what a refusal must look like, a folder's content (to check that
a refused command left it byte for byte as it was), and a script loaded as a module."""
import hashlib
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree_digest(folder):
    """{path relative to `folder`: sha256} of every file below it (the run lock aside: it is the lock's)."""
    digests = {}
    for root, _, files in os.walk(folder):
        for name in files:
            if name != ".lock":
                with open(os.path.join(root, name), "rb") as f:
                    digests[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def load_script(path):
    """A script of the checkout (e.g. "experiments/subset_npz.py") as a module, to call its main(argv)."""
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_one_line_naming(code, err, option):
    """Exit status 0 (the command worked), or 2 with one `error:` line that names `option`; never a traceback."""
    assert "Traceback" not in err
    if code != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
        names = (option, option[2:], option[2:].replace("-", "_"), option[2:].replace("-", " "))
        assert any(name in lines[0] for name in names), f"the error does not name {option}: {lines[0]}"


def summary_json(config=None, **fields):
    """A complete summary.json text of a finished run, as report.summarise writes it: Config's
    defaults with `config` over them, and these metrics with `fields` over them."""
    import json
    from tinyitop.config import Config
    summary = {"best_epoch": 1, "best_val_acc": 0.5, "test_acc_at_best_val": 0.5, "last_test_acc": 0.5,
               "best_test_acc": 0.5, "final_rs": 0.1, "final_rs_reliable": 0.05, "final_train_acc": 0.5,
               "train_flops_rel": 0.1, "test_flops_rel": 0.1, "epochs": 1, "iterations": 1,
               "config": Config(**(config or {})).to_json()}
    return json.dumps({**summary, **fields})
