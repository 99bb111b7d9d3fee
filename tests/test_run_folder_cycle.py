"""A run folder that tinyitop itself wrote can always be resumed again and replaced by --overwrite,
whatever the method (every method in Config's list, so a new one is covered without listing it)."""
import pytest

from fault_cases import tree_digest
from tinyitop.cli import main as cli_main
from tinyitop.config import EXPLORING, METHODS


def _args(out, method, *extra):
    sparsity = ["--sparsity", "0"] if method == "dense" else ["--sparsity", "0.8"]
    return ["train", "--dataset", "synthetic", "--hidden", "16", "--limit-train", "256", "--epochs", "2",
            "--lr", "0.05", "--method", method, *sparsity, "--out", str(out), "--no-progress", "--no-plots", *extra]


CASES = [(m, "1000") for m in METHODS] + [(m, "2") for m in METHODS if m in EXPLORING or m == "gmp"]


@pytest.mark.parametrize("method, update_interval", CASES, ids=[f"{m}-{u}" for m, u in CASES])
def test_run_resume_resume_overwrite_all_succeed(tmp_path, capsys, method, update_interval):
    # Delta T 1000 > the run's 4 iterations: no topology update, so updates.jsonl is never written;
    # resuming must not create it behind the manifest's back (it once did, and the folder got stuck).
    out = tmp_path / "run"
    cycle = [[], ["--resume"], ["--resume"], ["--overwrite"]]
    for extra in cycle:
        code = cli_main(_args(out, method, "--update-interval", update_interval, *extra))
        assert code == 0, (extra, capsys.readouterr().err)
    assert (out / "summary.json").exists()


def test_a_figure_the_user_put_in_place_of_a_drawn_one_is_never_deleted_or_replaced(tmp_path, capsys):
    """The manifest records what each figure held when drawn: a user's figure in its place (same
    name) is refused by --overwrite and by --resume, byte for byte untouched with everything else."""
    out = tmp_path / "run"
    args = [a for a in _args(out, "set", "--update-interval", "2") if a != "--no-plots"]
    assert cli_main(args) == 0
    (out / "training.png").write_bytes(b"my own figure")
    before = tree_digest(out)
    for extra in (["--overwrite"], ["--resume"]):
        assert cli_main(args + extra) == 2
        err = capsys.readouterr().err
        assert "training.png, changed since tinyitop drew it" in err and err.count("\n") == 1, err
        assert tree_digest(out) == before
    (out / "training.png").unlink()                          # the user lets tinyitop draw it again
    assert cli_main(args + ["--overwrite"]) == 0
    assert (out / "training.png").read_bytes()[:4] == b"\x89PNG"
