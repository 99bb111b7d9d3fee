"""demos/one_update.py reports what the library did: its numbers are checked against the library's state."""
import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo():
    spec = importlib.util.spec_from_file_location("one_update", os.path.join(ROOT, "demos", "one_update.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("growth", ["random", "gradient", "unexplored"])
def test_the_narrated_updates_match_the_library(any_backend, growth):
    printed = []
    updates = _demo().run(growth, seed=3, out=printed.append)
    assert len(updates) == 2
    numel = 6 * 8
    for u in updates:
        before, after = u["before"], u["after"]
        assert before["positions"].size == after["positions"].size == 14          # nnz conserved
        assert u["k"] == int(np.ceil(u["rate"] * 14)) and u["pruned"].size == u["k"] == u["grown"].size
        magnitude = dict(zip(before["positions"].tolist(), np.abs(before["values"]).tolist()))
        pruned = [magnitude[p] for p in u["pruned"].tolist()]
        kept = [magnitude[p] for p in u["kept"].tolist()]
        assert max(pruned) <= min(kept)                                             # the k smallest |w|
        grown_slots = np.searchsorted(after["positions"], u["grown"])
        assert (after["values"][grown_slots] == 0).all() and (after["momentum"][grown_slots] == 0).all()
        survivors = np.searchsorted(before["positions"], u["kept"])
        kept_slots = np.searchsorted(after["positions"], u["kept"])
        np.testing.assert_array_equal(after["values"][kept_slots], before["values"][survivors])
        union = np.union1d(before["explored"], after["positions"])
        np.testing.assert_array_equal(after["explored"], union)                    # explored = union of masks
        assert after["rs_layer"] == pytest.approx(union.size / numel)
        assert after["rs"] >= before["rs"] and after["rs_reliable"] >= before["rs_reliable"]
        assert not np.isin(u["grown"], u["kept"]).any()
        if growth == "gradient":                                                    # the top-k |g| candidates
            candidates = np.setdiff1d(np.arange(numel), u["kept"])
            top = candidates[np.argsort(-u["scores"][candidates], kind="stable")[:u["k"]]]
            assert set(top.tolist()) == set(u["grown"].tolist())
        if growth == "unexplored":
            never = numel - before["explored"].size
            assert np.isin(u["grown"], before["explored"]).sum() == max(0, u["k"] - never)
    first, second = updates
    confirmed = np.setdiff1d(np.intersect1d(first["grown"], second["kept"]), first["before"]["explored"])
    np.testing.assert_array_equal(np.intersect1d(second["confirmed"], confirmed), confirmed)
    text = "\n".join(printed)
    assert "indptr" in text and "k = ceil(p * nnz)" in text and "R_s" in text
    assert text.count("Update ") == 2


def test_the_demo_runs_from_the_command_line(capsys):
    assert _demo().main(["--growth", "unexplored", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "never explored" in out and "mask after" in out
