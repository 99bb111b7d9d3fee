"""Test accuracy against R_s for every finished run of one or more sweep folders (docs/RESULTS.md).

    python experiments/accuracy_vs_rs.py OUT.png SWEEP_FOLDER [SWEEP_FOLDER ...] [--title TITLE]

Each run's label is its folder name; runs are coloured by sparsity (dense runs: R_s 1).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from tinyitop.plots import accuracy_vs_rs  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out"), parser.add_argument("folders", nargs="+")
    parser.add_argument("--title", default="Test accuracy against the ITOP rate R_s")
    args = parser.parse_args(argv)
    points, seen = [], set()
    missing = [folder for folder in args.folders if not os.path.isdir(folder)]
    if missing:
        print(f"error: {', '.join(missing)} is not a folder (give sweep folders, e.g. runs/sweeps/NAME)", file=sys.stderr)
        raise SystemExit(2)
    for folder in args.folders:
        for run in sorted(os.listdir(folder)):
            path = os.path.join(folder, run, "summary.json")
            if not os.path.isfile(path) or os.path.realpath(path) in seen:   # a run linked into two sweeps
                continue
            seen.add(os.path.realpath(path))
            with open(path) as f:
                s = json.load(f)
            sparsity = 0 if s["config"]["method"] == "dense" else s["config"]["sparsity"]
            label = run.replace("_seed=0", "").replace("update_interval=", "Delta T ")
            points.append((label, s["final_rs"], s["final_rs_reliable"],
                           s["test_acc_at_best_val"], f"sparsity {sparsity:g}"))
    if not points:
        print(f"error: no finished run (summary.json) under {', '.join(args.folders)}", file=sys.stderr)
        raise SystemExit(2)
    print(accuracy_vs_rs(points, args.out, args.title))


if __name__ == "__main__":
    main()
