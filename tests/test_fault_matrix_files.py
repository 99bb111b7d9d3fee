"""The fault matrix of the files tinyitop reads, generated from the files themselves: a real run's
checkpoint (its arrays and every key of its metadata), manifest, logs and summary, a sweep config and
a data set .npz are each damaged in every key or field (dropped, null, a wrong type, a huge number)
and as a whole (empty, truncated, not JSON, deeply nested), then read by the command that reads them.

Each case must end in a normal run, or in exit status 2 with one `error:` line naming the file, no
traceback, and the run folder byte for byte as it was.
"""
import functools
import json
import os
import re
import shutil
import zipfile

import numpy as np
import pytest

from fault_cases import load_script, tree_digest
from tinyitop import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = ["train", "--dataset", "synthetic", "--hidden", "8", "--limit-train", "64", "--epochs", "1",
       "--batch-size", "16", "--update-interval", "2", "--no-progress", "--no-plots"]


def _values(value):
    """What one field is replaced by: null, a wrong type, a huge number, a negative one."""
    wrong = "x" if not isinstance(value, str) else 7
    return [None, wrong, -1] if isinstance(value, (int, float)) and not isinstance(value, bool) else [None, wrong]


def _field_cases(document, depth=2, prefix=()):
    """(path of keys, new value or DROP) for every key of a JSON document down to `depth`."""
    cases = []
    if isinstance(document, dict) and depth:
        for key, value in document.items():
            cases += [(prefix + (key,), DROP)] + [(prefix + (key,), v) for v in _values(value)]
            cases += _field_cases(value, depth - 1, prefix + (key,))
    return cases


DROP = object()
WHOLE = ["", "{", "[]", "null", "1e999", "[" * 5000 + "]" * 5000, '{"a": ' * 3000 + "1" + "}" * 3000]


def _mutate(document, path, value):
    document = json.loads(json.dumps(document))
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if value is DROP:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return json.dumps(document)


def _check(argv, named, folder, capsys):
    """Run a command (the CLI's arguments, or a function: a script's main): None for a normal run or
    one error line naming `named` with the folder unchanged; else what went wrong (a traceback's
    exception, several lines, an unnamed file...)."""
    before = tree_digest(folder)
    try:
        code = argv() if callable(argv) else cli.main(argv)
        code = 0 if code is None else code
    except SystemExit as stop:
        code = stop.code
    except Exception as err:                                  # what a user would see as a traceback
        capsys.readouterr()
        return f"traceback: {type(err).__name__}: {str(err)[:200]}"
    err = capsys.readouterr().err
    if code == 0:
        return None
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning")]
    if code != 2 or len(lines) != 1 or not lines[0].startswith("error: "):
        return f"exit {code}: {err[:300]}"
    if named not in lines[0]:
        return f"the error does not name {named}: {lines[0][:300]}"
    after = tree_digest(folder)
    if after != before:
        changed = sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n))
        return f"a refused command changed the folder ({', '.join(changed)}): {lines[0][:150]}"
    return None


def _describe(name, path, value):
    shown = "DROP" if value is DROP else repr(value)[:40]
    return f"{name} {'/'.join(map(str, path)) if path else '(whole file)'} = {shown}"


@pytest.fixture(scope="module", autouse=True)
def synthetic_once():
    """The synthetic set drawn once for the whole matrix (drawing it is ~90% of a resume's time)."""
    from tinyitop import data
    patch = pytest.MonkeyPatch()
    patch.setattr(data, "make_synthetic", functools.lru_cache(maxsize=4)(data.make_synthetic))
    yield
    patch.undo()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("matrix") / "run"
    assert cli.main(RUN + ["--out", str(out)]) == 0
    return out


def _copy(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


def _json_file_cases(run, name, jsonl=False):
    with open(run / name) as f:
        text = f.read()
    document = json.loads(text.splitlines()[-1] if jsonl else text)
    return [(name, path, value) for path, value in _field_cases(document)] + [(name, None, w) for w in WHOLE]


def _meta_cases(run):
    with np.load(run / "checkpoint.npz") as archive:
        meta, arrays = json.loads(str(archive["meta"])), [k for k in archive.files if k != "meta"]
    return ([("meta", path, value) for path, value in _field_cases(meta)] + [("meta", None, w) for w in WHOLE]
            + [("array", name, how) for name in arrays for how in ("drop", "shape", "dtype")]
            + [("file", None, how) for how in ("empty", "truncated", "not a zip")])


@pytest.fixture(scope="module")
def run_cases(finished_run):
    return {"json": _json_file_cases(finished_run, ".tinyitop-run") + _json_file_cases(finished_run, "summary.json")
            + _json_file_cases(finished_run, "metrics.jsonl", jsonl=True)
            + _json_file_cases(finished_run, "updates.jsonl", jsonl=True),
            "checkpoint": _meta_cases(finished_run)}


def _write_jsonl(path, last):
    with open(path) as f:
        lines = f.read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(lines[:-1] + [last]) + "\n")


def test_every_field_of_every_run_file_damaged_resumes_or_is_refused_in_one_line(finished_run, run_cases, tmp_path,
                                                                                  capsys):
    problems = []
    for index, (name, path, value) in enumerate(run_cases["json"]):
        run = _copy(finished_run, tmp_path / str(index))
        text = value if path is None else _mutate(json.loads(
            (run / name).read_text().splitlines()[-1] if name.endswith(".jsonl") else (run / name).read_text()),
            path, value)
        if name.endswith(".jsonl"):
            _write_jsonl(run / name, text)
        else:
            (run / name).write_text(text)
        problem = _check(RUN + ["--out", str(run), "--resume"], name, run, capsys)
        if problem:
            problems.append(f"{_describe(name, path, value)}: {problem}")
        shutil.rmtree(run)
    assert not problems, f"{len(problems)} of {len(run_cases['json'])} cases:\n" + "\n".join(problems)


def test_every_key_and_array_of_a_damaged_checkpoint_resumes_or_is_refused_in_one_line(finished_run, run_cases,
                                                                                       tmp_path, capsys):
    problems = []
    for index, (kind, path, value) in enumerate(run_cases["checkpoint"]):
        run = _copy(finished_run, tmp_path / str(index))
        target = run / "checkpoint.npz"
        with np.load(target) as archive:
            arrays = {k: archive[k] for k in archive.files}
        if kind == "meta":
            meta = json.loads(str(arrays["meta"]))
            arrays["meta"] = np.array(value if path is None else _mutate(meta, path, value))
        elif kind == "array" and value == "drop":
            del arrays[path]
        elif kind == "array":
            a = arrays[path]
            arrays[path] = np.append(a.reshape(-1), a.reshape(-1)[:1]) if value == "shape" else a.astype(
                np.complex64 if a.dtype.kind == "f" else np.float32)
        if kind == "file":
            data = target.read_bytes()
            target.write_bytes({"empty": b"", "truncated": data[:len(data) // 2], "not a zip": b"x" * 100}[value])
        else:
            with zipfile.ZipFile(target, "w") as archive:
                for key, array in arrays.items():
                    with archive.open(key + ".npy", "w") as f:
                        np.lib.format.write_array(f, array, allow_pickle=False)
        problem = _check(RUN + ["--out", str(run), "--resume"], "checkpoint.npz", run, capsys)
        if problem:
            problems.append(f"{_describe(kind, path if isinstance(path, tuple) else (path,), value)}: {problem}")
        shutil.rmtree(run)
    assert not problems, f"{len(problems)} of {len(run_cases['checkpoint'])} cases:\n" + "\n".join(problems)


SWEEP = {"name": "tiny", "title": "tiny",
         "reduced": {"base": {"dataset": "synthetic", "hidden": [8], "epochs": 1, "lr": 0.05, "sparsity": 0.9,
                              "method": "set", "update_interval": 2, "limit_train": 64, "batch_size": 16},
                     "grid": {"seed": [0]}}}


def test_every_field_of_a_damaged_sweep_config_is_refused_in_one_line_naming_it(tmp_path, capsys):
    problems, cases = [], [(path, value) for path, value in _field_cases(SWEEP, depth=4)] + [(None, w) for w in WHOLE]
    for index, (path, value) in enumerate(cases):
        folder = tmp_path / str(index)
        folder.mkdir()
        config = folder / "tiny.json"
        config.write_text(value if path is None else _mutate(SWEEP, path, value))
        problem = _check(["sweep", str(config), "--root", str(folder / "runs"), "--print-commands"], "tiny.json",
                         folder, capsys)
        if problem:
            problems.append(f"{_describe('config', path, value)}: {problem}")
    assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems)


def test_every_field_of_a_damaged_summary_in_a_sweep_is_reported_or_refused_naming_it(tmp_path, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(SWEEP))
    root = tmp_path / "runs"
    assert cli.main(["sweep", str(config), "--root", str(root), "--workers", "1"]) == 0
    summary = root / "tiny" / "seed=0" / "summary.json"
    original = json.loads(summary.read_text())
    capsys.readouterr()
    problems, cases = [], [(p, v) for p, v in _field_cases(original)] + [(None, w) for w in WHOLE]
    for path, value in cases:
        summary.write_text(value if path is None else _mutate(original, path, value))
        for mode in ("--status", "--aggregate"):
            problem = _check(["sweep", str(config), "--root", str(root), mode], "summary.json", root / "tiny", capsys)
            if problem:
                problems.append(f"{_describe('summary.json ' + mode, path, value)}: {problem}")
    assert not problems, f"{len(problems)} of {2 * len(cases)} cases:\n" + "\n".join(problems)


def _npz_cases():
    rng = np.random.default_rng(0)
    arrays = {"train_x": rng.integers(0, 255, (80, 1, 6, 6), dtype=np.uint8), "train_y": np.arange(80) % 4,
              "test_x": rng.integers(0, 255, (20, 1, 6, 6), dtype=np.uint8), "test_y": np.arange(20) % 4}
    cases = [("valid", None, arrays)]
    for name, array in arrays.items():
        for how, replacement in (("drop", None), ("float nan", np.full(array.shape, np.nan)),
                                 ("strings", array.astype(str)), ("one fewer", array[:-1]),
                                 ("extra axis", array[..., None]), ("negative", -np.ones(array.shape, np.int64)),
                                 ("huge", np.full(array.shape, 1e30)), ("empty", array[:0])):
            damaged = {k: v for k, v in arrays.items() if k != name}
            if replacement is not None:
                damaged[name] = replacement
            cases.append((how, name, damaged))
    return cases


def test_every_array_of_a_damaged_npz_data_set_trains_or_is_refused_naming_it(tmp_path, capsys):
    problems, cases = [], _npz_cases()
    for index, (how, name, arrays) in enumerate(cases):
        folder = tmp_path / str(index)
        folder.mkdir()
        np.savez(folder / "mine.npz", **arrays)
        argv = ["train", "--dataset", str(folder / "mine.npz"), "--hidden", "8", "--epochs", "1", "--batch-size", "16",
                "--no-progress", "--no-plots", "--out", str(folder / "run")]
        problem = _check(argv, "mine.npz", folder, capsys)
        if problem:
            problems.append(f"{name} {how}: {problem}")
    assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems)


# The scripts that read a finished run's summary.json (sweeps and figures: above), each given a folder
# holding one copy of the run, named as a sweep names its runs
SUMMARY_READERS = {
    "accuracy_vs_rs.py": lambda runs, tmp: load_script("experiments/accuracy_vs_rs.py").main(
        [str(tmp / f"figure{len(os.listdir(tmp))}.png"), str(runs)]),
    "compare_methods.py": lambda runs, tmp: load_script("experiments/compare_methods.py").main([str(runs), "--baseline", "a"]),
    "reproduce_rows.py": lambda runs, tmp: _rows_compared(load_script("experiments/reproduce_rows.py").main,
                                                          [str(runs / "a_seed=0"), "--epochs", "1"]),
}


def _rows_compared(main, argv):
    """reproduce_rows' exit status 1 is a result (the re-run rows differ, e.g. from a summary whose
    limit_train was dropped), not a fault."""
    try:
        return main(argv)
    except SystemExit as stop:
        if stop.code == 1:
            return 0
        raise


@pytest.mark.parametrize("reader", list(SUMMARY_READERS))
def test_every_field_of_a_damaged_summary_read_by_a_script_is_refused_naming_it(finished_run, tmp_path, capsys, reader):
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(finished_run, runs / "a_seed=0", ignore=shutil.ignore_patterns(".lock"))
    summary = runs / "a_seed=0" / "summary.json"
    original = json.loads(summary.read_text())
    figures = tmp_path / "figures"
    figures.mkdir()
    problems, cases = [], [(p, v) for p, v in _field_cases(original)] + [(None, w) for w in WHOLE]
    for path, value in cases:
        summary.write_text(value if path is None else _mutate(original, path, value))
        problem = _check(lambda: SUMMARY_READERS[reader](runs, figures), "summary.json", runs, capsys)
        if problem:
            problems.append(f"{_describe(reader, path, value)}: {problem}")
    assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems)


def test_every_json_text_is_parsed_by_parse_json():
    """JSON read from a file goes through atomic.parse_json (deep nesting: a ValueError naming the
    file), and summary.json through report.read_summary: a reader added later is covered by the
    matrices above. Allowed: the JSON a benchmark's own child process prints."""
    offenders = []
    for folder in ("tinyitop", "experiments", "demos", "benchmarks"):
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if not name.endswith(".py") or (folder, name) == ("tinyitop", "atomic.py"):
                continue
            with open(os.path.join(ROOT, folder, name), encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if re.search(r"json\.loads?\(", line) and not re.search(r"json\.loads\((done|result)\.stdout|sys\.argv", line):
                        offenders.append(f"{folder}/{name}:{number}: {line.strip()}")
                    if "summary.json" in line and re.search(r"\bopen\(|parse_json\(", line):
                        offenders.append(f"{folder}/{name}:{number} (use report.read_summary): {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_every_field_of_a_damaged_failure_record_or_claim_is_shown_or_refused_in_one_line(tmp_path, capsys):
    """The sweep's own small files, RUN/.failed (a failed run's record) and RUN/.claim-G (who trains
    it), damaged field by field and whole, read by `sweep --status` and by the sweep itself."""
    from tinyitop import claims
    config = tmp_path / "tiny.json"
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not an npz")                               # the run fails: the sweep writes .failed
    config.write_text(json.dumps({**SWEEP, "reduced": {**SWEEP["reduced"], "base": {
        **SWEEP["reduced"]["base"], "dataset": str(broken)}}}))
    root = tmp_path / "runs"
    assert cli.main(["sweep", str(config), "--root", str(root), "--workers", "1"]) != 0
    run_folder = root / "tiny" / "seed=0"
    failed = run_folder / ".failed"
    capsys.readouterr()
    problems, count = [], 0
    for kind in ("failure", "claim"):
        held = claims.try_claim(str(run_folder)) if kind == "claim" else None   # this process's: "running"
        path = failed if kind == "failure" else run_folder / f".claim-{held.generation}"
        original = json.loads(path.read_text())
        for field, value in [(p, v) for p, v in _field_cases(original)] + [(None, w) for w in WHOLE]:
            path.write_text(value if field is None else _mutate(original, field, value))
            count += 1
            problem = _check(["sweep", str(config), "--root", str(root), "--status"], path.name, root / "tiny", capsys)
            if problem and "has finished yet" not in problem:         # --status: nothing to gather yet
                problems.append(f"{_describe(path.name, field, value)}: {problem}")
        if held:
            held.release()
        else:
            path.write_text(json.dumps(original))
    assert not problems, f"{len(problems)} of {count} cases:\n" + "\n".join(problems)


@pytest.mark.parametrize("how", ["drop", "shape", "dtype", "empty", "truncated", "not a zip"])
def test_a_damaged_lth_init_file_is_one_error_naming_it(tmp_path, how):
    """LTH rewinds to its dense twin's OUT/dense/init.npz (checkpoint.load_parameters): every array
    dropped, of another shape or dtype, or the file empty, truncated or not a zip, is a CheckpointError
    naming the file (the CLI's one line), never a KeyError or a silently reshaped weight."""
    from tinyitop import checkpoint
    from tinyitop.models import mlp
    model = mlp(12, (8,), 3)
    path = tmp_path / "init.npz"
    checkpoint.save_parameters(str(path), model)
    data = path.read_bytes()
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    first = sorted(arrays)[0]
    if how in ("empty", "truncated", "not a zip"):
        path.write_bytes({"empty": b"", "truncated": data[:len(data) // 2], "not a zip": b"x" * 100}[how])
    else:
        if how == "drop":
            del arrays[first]
        else:
            a = arrays[first]
            arrays[first] = a.reshape(-1)[:-1] if how == "shape" else a.astype(np.float64)
        np.savez(path, **arrays)
    with pytest.raises(checkpoint.CheckpointError, match="init.npz"):
        checkpoint.load_parameters(str(path), mlp(12, (8,), 3))
