"""Test accuracy against R_s for every finished run of one or more sweep folders (docs/RESULTS.md).

    python experiments/accuracy_vs_rs.py OUT.png SWEEP_FOLDER [SWEEP_FOLDER ...] [--title TITLE]

Each run's label is its folder name; runs are coloured by sparsity (dense runs: R_s 1).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from tinyitop.atomic import check_target  # noqa: E402
from tinyitop.options import Parser, fail  # noqa: E402
from tinyitop.report import read_summary  # noqa: E402
from tinyitop.plots import accuracy_vs_rs  # noqa: E402


def main(argv=None):
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("out"), parser.add_argument("folders", nargs="+")
    parser.add_argument("--title", default="Test accuracy against the ITOP rate R_s")
    args = parser.parse_args(argv)
    if os.path.isdir(args.out):
        fail(f"{args.out} is a folder: give the figure's file name, e.g. {os.path.join(args.out, 'accuracy_vs_rs.png')}")
    out = args.out if os.path.splitext(args.out)[1] else args.out + ".png"   # what matplotlib would write
    try:
        check_target(out, overwrite_option=None, create_folder=False)    # exists, a folder, unwritable
    except OSError as err:
        fail(str(err))
    points, seen = [], set()
    missing = [folder for folder in args.folders if not os.path.isdir(folder)]
    if missing:
        fail(f"{', '.join(missing)} is not a folder (give sweep folders, e.g. runs/sweeps/NAME)")
    for folder in args.folders:
        for run in sorted(os.listdir(folder)):
            path = os.path.join(folder, run, "summary.json")
            if not os.path.isfile(path) or os.path.realpath(path) in seen:   # a run linked into two sweeps
                continue
            seen.add(os.path.realpath(path))
            try:
                s = read_summary(path, remedy="move it away or train that run again")
                sparsity = 0 if s["config"]["method"] == "dense" else float(s["config"]["sparsity"])
                # The test accuracy at the best validation epoch; a run without a validation split has
                # none, and gives its last epoch's.
                accuracy = s["test_acc_at_best_val"] if s.get("test_acc_at_best_val") is not None else s["last_test_acc"]
                point = (run.replace("_seed=0", "").replace("update_interval=", "Delta T "), float(s["final_rs"]),
                         float(s["final_rs_reliable"]), float(accuracy), f"sparsity {sparsity:g}")
            except OSError as err:
                fail(f"{path} cannot be read ({err.strerror})")
            except ValueError as err:                        # names the file and what is wrong in it
                fail(str(err))
            points.append(point)
    if not points:
        fail(f"no finished run (summary.json) under {', '.join(args.folders)}")
    accuracy_vs_rs(points, out, args.title)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
