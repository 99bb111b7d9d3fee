"""Re-run the first epochs of a logged run and check they give the logged rows, timing fields aside.

    python experiments/reproduce_rows.py LOGGED_RUN [--epochs 2] [--dataset PATH.npz]

LOGGED_RUN holds a run's summary.json (its settings), metrics.jsonl and updates.jsonl, e.g. a folder of
docs/results/. The run is trained again with exactly those settings (the whole schedule: LR drops and
the prune rate's cosine stay where the full run had them) in a temporary folder, stopped after
--epochs epochs, and its epoch and update rows are compared with the logged ones. Prints "same rows"
(exit 0) or the first difference (exit 1).
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from tinyitop.cli import dataset_arg  # noqa: E402
from tinyitop.config import Config  # noqa: E402
from tinyitop.options import Parser, fail  # noqa: E402
from tinyitop.report import TrainingDiverged, read_summary  # noqa: E402
from tinyitop.data import DatasetError  # noqa: E402
from tinyitop.metrics import EPOCH_FIELDS, TIMING_FIELDS, UPDATE_FIELDS, read_jsonl  # noqa: E402
from tinyitop.train import train  # noqa: E402


class _Stop(Exception):
    pass


def _rows(path, fields, keep):
    """The rows of a log that `keep` accepts, without the machine's timings; a damaged log is one line."""
    try:
        rows = read_jsonl(path, fields)
    except (OSError, ValueError) as err:                     # each names the file (and line)
        fail(str(err).replace("use --overwrite to start the run again", "give a run folder whose logs are whole"))
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows if keep(row)]


def main(argv=None):
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a folder with summary.json, metrics.jsonl and updates.jsonl")
    parser.add_argument("--epochs", type=int, default=2, help="epochs to re-run (default: %(default)s)")
    parser.add_argument("--dataset", type=dataset_arg, default=None, help="the data set file, if not where the run found it")
    args = parser.parse_args(argv)
    path = os.path.join(args.run, "summary.json")
    try:
        config = Config(**read_summary(path, remedy="give a finished run's folder")["config"])
    except OSError as err:
        fail(f"{path} cannot be read ({err.strerror}): give a finished run's folder")
    except ValueError as err:                                # names the file and what is wrong in it
        fail(str(err))
    if not 1 <= args.epochs <= config.total_epochs:
        fail(f"--epochs must be in [1, {config.total_epochs}], got {args.epochs}")
    logged_rows = _rows(os.path.join(args.run, "metrics.jsonl"), EPOCH_FIELDS, lambda row: row["epoch"] <= args.epochs)
    with tempfile.TemporaryDirectory() as scratch:
        again = Config(**{**config.to_json(), "hidden": config.hidden, "dense_layers": config.dense_layers,
                          "out": os.path.join(scratch, "run"), "resume": False, "overwrite": False, "progress": False,
                          **({"dataset": args.dataset} if args.dataset else {})})

        def stop(epoch):
            if epoch >= args.epochs:
                raise _Stop()
        try:
            train(again, log=lambda *_: None, on_epoch_end=stop)
        except _Stop:
            pass
        except (ValueError, OSError, DatasetError, TrainingDiverged) as err:    # e.g. its data set is gone
            fail(f"re-running {args.run} failed: {err}")
        rows = _rows(os.path.join(again.out, "metrics.jsonl"), EPOCH_FIELDS, lambda row: True)
        last_step = rows[-1]["iteration"] if rows else 0        # updates up to the last re-run epoch's end
        pairs = [("metrics.jsonl", logged_rows, rows)]
        updates = os.path.join(args.run, "updates.jsonl")
        if os.path.exists(updates) or os.path.exists(os.path.join(again.out, "updates.jsonl")):
            keep = lambda row: row["iteration"] <= last_step  # noqa: E731
            mine = os.path.join(again.out, "updates.jsonl")
            pairs.append(("updates.jsonl", _rows(updates, UPDATE_FIELDS, keep), _rows(mine, UPDATE_FIELDS, keep)))
    for name, logged, fresh in pairs:
        if logged != fresh:
            where = next((i for i, (a, b) in enumerate(zip(logged, fresh)) if a != b), min(len(logged), len(fresh)))
            print(f"{name}: row {where + 1} differs ({len(logged)} logged rows, {len(fresh)} re-run)")
            if where < min(len(logged), len(fresh)):
                keys = [k for k in logged[where] if logged[where].get(k) != fresh[where].get(k)]
                print(f"  differing fields: {', '.join(keys[:8])}")
            raise SystemExit(1)
    print(f"same rows: {len(pairs[0][1])} epoch rows" + (f", {len(pairs[1][1])} update rows" if len(pairs) > 1 else "")
          + f" of {args.run}")


if __name__ == "__main__":
    main()
