"""The fault matrix, generated from the code's own parsers and readers so that a new option, key or
field is covered without anyone listing it (issue: "checked by construction, not by case").

Each case must end in a normal run (here: training is reached, then stopped) or in exit status 2
with one `error:` line naming the option or file, and no traceback; nothing of the user's changes.
"""
import argparse

import numpy as np
import pytest

from fault_cases import assert_one_line_naming
from tinyitop import cli
from tinyitop import train as train_module
from tinyitop.options import Parser

BASE = ["--dataset", "synthetic", "--hidden", "8", "--limit-train", "64", "--epochs", "1", "--batch-size", "16",
        "--no-progress", "--no-plots"]
BAD_NUMBERS = ["-1", "0", "1e300", "99999999999999999999", "nan", "inf", "abc", ""]


class Started(Exception):
    """A first epoch was trained, evaluated, logged and checkpointed, and the run would go on."""


def _train_options():
    """Every option of `python -m tinyitop train` that takes a value, from the parser itself."""
    parser = Parser(prog="python -m tinyitop train")
    cli.add_train_arguments(parser)
    return [a for a in parser._actions if a.option_strings and a.nargs != 0 and a.dest != "help"]


def _run(argv, capsys, monkeypatch):
    """(exit status or "started", stderr) of the train command: a run goes through its first epoch
    (trained, evaluated, logged, checkpointed) and stops there if it has more; a traceback fails the test."""
    end_epoch = train_module._end_epoch

    def first_epoch_only(config, folder, run, *args):
        end_epoch(config, folder, run, *args)
        if run.state["epoch"] < config.total_epochs:
            raise Started
    monkeypatch.setattr(train_module, "_end_epoch", first_epoch_only)
    try:
        code = cli.main(argv)
    except Started:
        code = "started"
    except SystemExit as stop:            # argparse's own refusals (options.Parser: one line, status 2)
        code = stop.code
    return code, capsys.readouterr().err


def _cases():
    cases = []
    for action in _train_options():
        option = action.option_strings[0]
        values = list(action.choices) + ["not-a-choice"] if action.choices else BAD_NUMBERS
        if action.type in (None, str) and not action.choices:
            values = ["", "x" * 300, "nan"]
        cases += [(option, value) for value in values]
    return cases


@pytest.mark.parametrize("option, value", _cases(), ids=[f"{o}={v[:12]}" for o, v in _cases()])
def test_every_train_option_at_every_bad_value_is_one_line_or_a_run(tmp_path, capsys, monkeypatch, option, value):
    monkeypatch.chdir(tmp_path)
    out = ["--out", str(tmp_path / "run")] if option != "--out" else []
    narrow = ["--width", "0.0625"] if option == "--model" and value not in ("mlp", "not-a-choice") else []  # seconds
    code, err = _run(["train", *BASE, *out, *narrow, option, value], capsys, monkeypatch)
    assert_one_line_naming(0 if code == "started" else code, err, option)      # "started": a normal run


def _subcommand_options(name):
    """Every option that takes a value of a subcommand of `python -m tinyitop`, from its parser."""
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return [a for a in sub._actions if a.option_strings and a.nargs != 0 and a.dest != "help"]


def _other_cases():
    cases = []
    for command in ("sweep", "pack-images"):
        for action in _subcommand_options(command):
            values = list(action.choices) + ["not-a-choice"] if action.choices else BAD_NUMBERS
            cases += [(command, action.option_strings[0], value) for value in values]
    return cases


SWEEP = {"name": "tiny", "title": "tiny", "reduced": {"base": {"dataset": "synthetic", "hidden": [8], "epochs": 1,
                                                               "limit_train": 64, "batch_size": 16},
                                                      "grid": {"seed": [0]}}}


@pytest.mark.parametrize("command, option, value", _other_cases(), ids=[f"{c}{o}={v[:12]}" for c, o, v in _other_cases()])
def test_every_sweep_and_pack_option_at_every_bad_value_is_one_line_or_a_run(tmp_path, capsys, monkeypatch, command,
                                                                            option, value):
    """The sweep's options on a sweep that is asked only for its status (no training), pack-images' on
    a folder of 4 images: each bad value is one line naming the option, or the command works."""
    import json
    monkeypatch.chdir(tmp_path)
    if command == "sweep":
        (tmp_path / "tiny.json").write_text(json.dumps(SWEEP))
        root = [] if option == "--root" else ["--root", str(tmp_path / "runs")]
        mode = "--slurm" if option in {o for a in _subcommand_options("sweep") for o in a.option_strings
                                       if a.container.title == "cluster"} else "--status"
        argv = ["sweep", str(tmp_path / "tiny.json"), *root, mode, option, value]
    else:
        import matplotlib.image
        for split in ("train", "test"):
            for label in ("a", "b"):
                (tmp_path / "imgs" / split / label).mkdir(parents=True)
                matplotlib.image.imsave(tmp_path / "imgs" / split / label / "0.png", np.zeros((4, 4, 3), np.uint8))
        argv = ["pack-images", str(tmp_path / "imgs"), str(tmp_path / "out.npz"), option, value]
    try:
        code = cli.main(argv)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    if code == 2 and lines and "nothing to gather" in lines[-1]:
        code = 0                             # the status of a sweep never run: the options were accepted
    assert_one_line_naming(code, err, option)


def test_the_matrix_covers_every_train_option():
    """A new option joins the matrix by being added to the parser: nothing here lists them."""
    options = {o for a in _train_options() for o in a.option_strings}
    assert {"--epochs", "--lr", "--sparsity", "--update-interval", "--width", "--out"} <= options
    assert all(isinstance(a, argparse.Action) for a in _train_options())
