"""Each method of a sweep against a baseline: the difference of the seed means and its standard error.

    python experiments/compare_methods.py SWEEP_FOLDER --baseline "static 0.98" [--metric test_acc_at_best_val]

Reads every finished run's summary.json in SWEEP_FOLDER (folders LABEL_seed=S, as the sweep names
them), groups the runs by label, and prints a markdown table: per label the seeds, the mean and
sample standard deviation of the metric, R_s and reliable R_s, and against the baseline the
difference of the means, its standard error sqrt(sd_a^2/n_a + sd_b^2/n_b) (Welch) and their ratio.
A difference counts as shown when it exceeds 2 standard errors with at least 3 seeds a side.
"""
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from a checkout
from tinyitop.options import Parser, fail  # noqa: E402
from tinyitop.report import read_summary  # noqa: E402

METRICS = ("test_acc_at_best_val", "last_test_acc", "final_rs", "final_rs_reliable")


def mean_sd(values):
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, sd


def groups(folder):
    """{label: {seed: summary}} of the finished runs under `folder`."""
    found = {}
    for run in sorted(os.listdir(folder)):
        match = re.fullmatch(r"(?P<label>.+)_seed=(?P<seed>\d+)", run)
        path = os.path.join(folder, run, "summary.json")
        if not match or not os.path.isfile(path):
            continue
        try:
            summary = read_summary(path, remedy="move it away or train that run again")
        except OSError as err:
            fail(f"{path} cannot be read ({err.strerror})")
        except ValueError as err:                            # names the file and what is wrong in it
            fail(str(err))
        values = {m: float(summary[m]) for m in METRICS if summary.get(m) is not None}
        found.setdefault(match.group("label"), {})[int(match.group("seed"))] = values
    return found


def table(found, baseline, metric):
    base = [run[metric] for run in found[baseline].values()]
    base_mean, base_sd = mean_sd(base)
    lines = [f"| run | seeds | {metric} per seed | mean +- sd | final R_s (reliable) | - {baseline}, points | "
             "standard error | difference / SE | shown (> 2 SE, >= 3 seeds a side) |", "|" + "---|" * 9]
    for label, runs in found.items():
        values = [runs[s][metric] for s in sorted(runs)]
        mean, sd = mean_sd(values)
        rs, reliable = (mean_sd([r[k] for r in runs.values()])[0] for k in ("final_rs", "final_rs_reliable"))
        cells = [label, str(len(values)), " / ".join(f"{v:.4f}" for v in values),
                 f"{mean:.4f}" + ("" if sd is None else f" +- {sd:.4f}"), f"{rs:.3f} ({reliable:.3f})"]
        if label == baseline or sd is None or base_sd is None:
            cells += ["", "", "", ""]
        else:
            se = math.sqrt(sd ** 2 / len(values) + base_sd ** 2 / len(base))
            diff = mean - base_mean
            shown = diff > 2 * se and len(values) >= 3 and len(base) >= 3
            cells += [f"{100 * diff:+.2f}", f"{100 * se:.2f}", f"{diff / se:+.1f}" if se else "inf",
                      "**yes**" if shown else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a sweep folder, e.g. runs/sweeps/cifar10_vgg_itop-cifar10")
    parser.add_argument("--baseline", required=True, help="the label to compare against, e.g. 'static 0.98'")
    parser.add_argument("--metric", default="test_acc_at_best_val", choices=METRICS[:2],
                        help="test accuracy at the best validation epoch, or at the last (default: %(default)s)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.folder):
        fail(f"{args.folder} is not a folder (give a sweep folder)")
    found = groups(args.folder)
    baseline = args.baseline.replace(" ", "-")             # the sweep's folder names have no spaces
    if baseline not in found:
        fail(f"--baseline {args.baseline!r}: no finished run with that label in {args.folder} "
             f"(labels: {', '.join(found) or 'none'})")
    missing = [f"{label}_seed={seed}" for label, runs in found.items() for seed, values in runs.items()
               if args.metric not in values]
    if missing:                                             # a run trained without a validation split
        fail(f"{os.path.join(args.folder, missing[0], 'summary.json')} has no {args.metric} (trained without a "
             f"validation split{', as are others' if len(missing) > 1 else ''}): give --metric last_test_acc")
    print(table(found, baseline, args.metric))


if __name__ == "__main__":
    main()
