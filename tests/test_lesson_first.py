"""The code reads lesson first: a short README that starts with the two commands, short functions
in the files a learner reads first, a from-scratch file with no tinyitop in it, and no reference
to a document outside the repository."""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LESSON_FILES = ["tinyitop/topology.py", "tinyitop/explore.py", "tinyitop/layers.py", "tinyitop/sparse.py",
                "tinyitop/blocks.py", "tinyitop/im2col.py", "tinyitop/losses.py", "tinyitop/optim.py"]
# What the repository is made of (a CI copy has no .git, and its venv and HOME sit beside these).
REPOSITORY = ["tinyitop", "demos", "tests", "benchmarks", "experiments", "docs", ".ci", "README.md",
              "requirements.txt", "requirements-gpu.txt"]


def _read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def _functions(path):
    """{qualified name: number of lines} of every function and method in a Python file."""
    lengths = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if isinstance(child, ast.FunctionDef):
                    lengths[name] = child.end_lineno - child.lineno + 1
                visit(child, name + ".")
    visit(ast.parse(_read(path)), "")
    return lengths


def test_readme_is_a_quick_start_with_the_two_commands_first():
    lines = _read("README.md").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move reference material to docs/"
    first = "\n".join(lines[:15])
    assert "pip install -r requirements.txt && python demos/" in first and "python -m pytest -q" in first


@pytest.mark.parametrize("path", LESSON_FILES)
def test_lesson_files_have_no_function_over_40_lines(path):
    long = {name: n for name, n in _functions(path).items() if n > 40}
    assert not long, f"{path}: {long}"


def test_the_training_loop_fits_one_screen():
    lengths = _functions("tinyitop/train.py")
    assert lengths["train_epoch"] <= 40
    assert max(lengths.values()) <= 60, lengths


def test_the_from_scratch_file_is_short_and_stands_alone():
    source = _read("demos/itop_from_scratch.py")
    assert len(source.splitlines()) <= 200
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(source))
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])}
    assert imported <= {"argparse", "gzip", "math", "os", "zlib", "numpy", "scipy"}, imported


def test_nothing_refers_to_a_document_outside_the_repository():
    outside = re.compile("|".join(["GPU" + "-NOTES", "PERF" + "-NOTES", "CONV" + "-NOTES", r"\.\./" + "shared", "shared" + "/reference"]))
    found = []
    for top in REPOSITORY:
        start = os.path.join(ROOT, top)
        paths = [start] if os.path.isfile(start) else [os.path.join(d, f) for d, _, files in os.walk(start)
                                                        for f in files]
        for path in paths:
            if path.endswith((".py", ".md", ".json", ".txt", ".sh", "run")):
                with open(path, encoding="utf-8", errors="replace") as f:
                    found += [f"{os.path.relpath(path, ROOT)}:{i}" for i, line in enumerate(f, 1) if outside.search(line)]
    assert not found, found
