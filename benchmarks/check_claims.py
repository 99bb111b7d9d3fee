"""Re-measure every speed and memory claim the docs make for this CPU, and say which still hold.

The claims live in one table, "Claims on this CPU" in docs/SPEED.md: one row per claim, its id in
backquotes, the documented figure, the command. This script reads the documented figures from that
table (so the doc and the check cannot drift apart: a claim missing from it is an error), measures
each one, and prints documented against measured with the doc line. Compared runs are interleaved,
round by round (dense, sparse, dense, sparse...), each in a fresh process, and a ratio is the median
of the per-round ratios, so the machine's drift cancels. A benchmark, not a test: not in CI; run it
on a quiet machine after any change on a hot path.

    python benchmarks/check_claims.py --quick     # the paper MLP table and the conv sparse/dense ratio
    python benchmarks/check_claims.py             # every claim (several minutes: docs/SPEED.md says)

Exit status 1 when a measured figure falls more than 25% short of the documented one (a speed-up
below 0.75x the doc's, a memory figure above doc / 0.75); 2 for a bad option or a claim the table
lacks. Claims against PyTorch are skipped, not failed, where torch does not import, and the
Fashion-MNIST one where Debian's dataset-fashion-mnist is not installed.
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import bench_sparse  # noqa: E402
from bench_options import Parser, fail, whole_number  # noqa: E402

DOC = os.path.join("docs", "SPEED.md")
SHORTFALL = 0.75            # a figure more than 25% short of the documented one fails
FASHION_DIR = "/usr/share/datasets/fashion-mnist"      # Debian's dataset-fashion-mnist
PAPER_MLP = [3072, 1024, 512, 10]
WIDE_MLP = [784, 10000, 10000, 10000, 10]

# id -> (what it says, "higher" or "lower" is better, in --quick). The measured value of each id
# comes from MEASURES below; the documented value from the doc's table.
CLAIMS = {
    "mlp-0.95-vs-dense": ("paper MLP, 0.95 ERK: step x faster than dense", "higher", True),
    "mlp-0.99-vs-dense": ("paper MLP, 0.99 ERK: step x faster than dense", "higher", True),
    "mlp-0.95-memory": ("paper MLP, 0.95 ERK: memory held / dense's", "lower", True),
    "mlp-0.95-vs-torch": ("paper MLP, 0.95 ERK: x faster than PyTorch masked", "higher", True),
    "mlp-0.99-vs-torch": ("paper MLP, 0.99 ERK: x faster than PyTorch masked", "higher", True),
    "vgg16-0.95-vs-dense": ("VGG-16 width 1/4, 0.95 ERK: step x faster than dense", "higher", True),
    "resnet18-0.95-vs-dense": ("ResNet-18 width 1/4, 0.95 ERK: step x faster than dense", "higher", False),
    "vgg16-dense-vs-torch": ("VGG-16 width 1/4, dense: step / PyTorch's", "lower", False),
    "resnet18-dense-vs-torch": ("ResNet-18 width 1/4, dense: step / PyTorch's", "lower", False),
    "wide-0.99-vs-dense": ("wide MLP 784-10000x3-10, 0.99 ERK: step x faster than dense", "higher", False),
    "fashion-epoch-vs-dense": ("Fashion-MNIST 784-1000x3-10, SET epsilon 20: epoch x faster than dense", "higher", False),
    "wide-0.99-peak-rss": ("wide MLP, 0.99 ERK: peak RSS, MB", "lower", False),
    "rigl-peak-rss": ("RigL, 784-20000x3-10 at 0.999: peak RSS of a run, MB", "lower", False),
    "million-peak-rss": ("demos/million_neurons.py --quick: peak RSS, MB", "lower", False),
}


def documented(doc_path):
    """{id: (value, line number)} from the doc's claims table: rows `| \\`id\\` | what | value | ...`."""
    found = {}
    with open(doc_path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            match = re.match(r"\|\s*`([a-z0-9.-]+)`\s*\|[^|]*\|\s*\**([0-9][0-9,]*\.?[0-9]*)", line)
            if match and match.group(1) in CLAIMS:
                found[match.group(1)] = (float(match.group(2).replace(",", "")), number)
    return found


def interleaved(specs, rounds):
    """Each spec run once per round, in order, `rounds` times: {name: [result per round]}."""
    results = {name: [] for name in specs}
    for _ in range(rounds):
        for name, spec in specs.items():
            results[name].append(bench_sparse.launch(spec))   # a fresh process each
    return results


def median_ratio(tops, bottoms):
    return statistics.median(t / b for t, b in zip(tops, bottoms))


def measure_mlp(rounds, use_torch, steps):
    specs = {"dense": {"sizes": PAPER_MLP, "sparsity": None, "init": "erk", "steps": steps}}
    for s in (0.95, 0.99):
        specs[s] = {"sizes": PAPER_MLP, "sparsity": s, "init": "erk", "steps": steps, "torch": use_torch}
    runs = interleaved(specs, rounds)
    ms = {name: [r["ms_per_step"] for r in rs] for name, rs in runs.items()}
    found = {f"mlp-{s}-vs-dense": median_ratio(ms["dense"], ms[s]) for s in (0.95, 0.99)}
    found["mlp-0.95-memory"] = runs[0.95][0]["held_mb"] / runs["dense"][0]["held_mb"]
    for s in (0.95, 0.99):
        torch_ms = [r.get("torch_ms") for r in runs[s]]
        if None not in torch_ms:
            found[f"mlp-{s}-vs-torch"] = median_ratio(torch_ms, ms[s])
    return found


def measure_conv(rounds, names, use_torch):
    found = {}
    for name in names:
        specs = {"dense": {"model": name, "sparsity": None, "init": "erk", "steps": 2, "width": 0.25,
                           "torch": use_torch},
                 "sparse": {"model": name, "sparsity": 0.95, "init": "erk", "steps": 2, "width": 0.25}}
        runs = interleaved(specs, rounds)
        ms = {k: [r["ms_per_step"] for r in rs] for k, rs in runs.items()}
        found[f"{name}-0.95-vs-dense"] = median_ratio(ms["dense"], ms["sparse"])
        torch_ms = [r.get("torch_ms") for r in runs["dense"]]
        if None not in torch_ms:
            found[f"{name}-dense-vs-torch"] = median_ratio(ms["dense"], torch_ms)
    return found


def measure_wide(rounds):
    specs = {"dense": {"sizes": WIDE_MLP, "sparsity": None, "init": "erk", "steps": 2},
             "sparse": {"sizes": WIDE_MLP, "sparsity": 0.99, "init": "erk", "steps": 10}}
    runs = interleaved(specs, rounds)
    ms = {k: [r["ms_per_step"] for r in rs] for k, rs in runs.items()}
    return {"wide-0.99-vs-dense": median_ratio(ms["dense"], ms["sparse"]),
            "wide-0.99-peak-rss": max(r["peak_rss_mb"] for r in runs["sparse"])}


# Run a command as the only child of a fresh Python, which then reports that child's peak RSS (KiB):
# RUSAGE_CHILDREN in this process would hold the largest of all the runs above.
PEAK_OF_CHILD = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
                 "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
                 "sys.stderr.write(done.stderr)")


def measure_fashion(rounds):
    """One epoch of Fashion-MNIST (Debian's dataset-fashion-mnist), dense and SET's epsilon-20 net."""
    if not os.path.exists(FASHION_DIR):
        return {}
    from bench_sparse import set_epsilon_sparsity
    sizes = [784, 1000, 1000, 1000, 10]
    specs = {"dense": {"sizes": sizes, "sparsity": None, "init": "er", "steps": 469, "fashion": True},
             "sparse": {"sizes": sizes, "sparsity": set_epsilon_sparsity(sizes, 20), "init": "er", "steps": 469,
                        "fashion": True}}
    runs = interleaved(specs, rounds)
    return {"fashion-epoch-vs-dense": median_ratio([r["seconds"] for r in runs["dense"]],
                                                   [r["seconds"] for r in runs["sparse"]])}


def peak_rss_of(command):
    """Peak RSS (MB) of `command` run from the repository root."""
    done = subprocess.run([sys.executable, "-c", PEAK_OF_CHILD, *command], cwd=ROOT, capture_output=True, text=True)
    status, kib = done.stdout.split()[-2:] if done.stdout.strip() else ("1", "0")
    if done.returncode or status != "0":
        fail(f"{' '.join(command)} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return int(kib) / 1024


def measure_memory():
    """RigL's wide run and the million-neuron demo's --quick run (each in its own process)."""
    with tempfile.TemporaryDirectory() as scratch:
        rigl = peak_rss_of([sys.executable, "-m", "tinyitop", "train", "--dataset", "fashion-mnist"
                            if os.path.exists(FASHION_DIR) else "synthetic",
                            "--hidden", "20000,20000,20000", "--init", "er", "--sparsity", "0.999",
                            "--method", "rigl", "--limit-train", "1280", "--epochs", "1",
                            "--update-interval", "5", "--out", os.path.join(scratch, "rigl"),
                            "--no-progress", "--no-plots"])
        million = peak_rss_of([sys.executable, os.path.join("demos", "million_neurons.py"), "--quick",
                               "--out", os.path.join(scratch, "million")])
    return {"rigl-peak-rss": rigl, "million-peak-rss": million}


def verdict(claim_id, value, doc_value):
    better = CLAIMS[claim_id][1]
    ok = value >= SHORTFALL * doc_value if better == "higher" else value <= doc_value / SHORTFALL
    return "ok" if ok else "SHORT"


def parse(argv=None):
    """The options, checked before any timing (the doc must state every claim that will be checked)."""
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the paper MLP and the conv sparse/dense ratio only "
                                                              "(under a minute)")
    parser.add_argument("--rounds", type=whole_number(1, 100), default=3, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--no-torch", action="store_true", help="skip the claims against PyTorch")
    parser.add_argument("--doc", default=DOC, help="the doc holding the claims table (default: %(default)s)")
    args = parser.parse_args(argv)
    args.doc_path = args.doc if os.path.isabs(args.doc) else os.path.join(ROOT, args.doc)
    if not os.path.isfile(args.doc_path):
        fail(f"--doc {args.doc} is not a file")
    args.wanted = [c for c, (_, _, quick) in CLAIMS.items() if quick or not args.quick]
    try:
        args.documented = documented(args.doc_path)
    except (OSError, UnicodeDecodeError) as err:
        fail(f"--doc {args.doc} cannot be read as text ({type(err).__name__})")
    missing = [c for c in args.wanted if c not in args.documented]
    if missing:
        fail(f"{args.doc} has no claims-table row for {', '.join(missing)}: state it there or drop it here")
    return args


def main(argv=None):
    args = parse(argv)
    use_torch = not args.no_torch
    if use_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            use_torch = False
    started = time.perf_counter()
    measured = measure_mlp(args.rounds, use_torch, steps=20)
    measured.update(measure_conv(args.rounds, ["vgg16"] if args.quick else ["vgg16", "resnet18"], use_torch))
    if not args.quick:
        measured.update(measure_wide(args.rounds))
        measured.update(measure_fashion(args.rounds))
        measured.update(measure_memory())
    print(f"{'claim':26s} {'documented':>10s} {'measured':>9s}  verdict  where ({args.rounds} interleaved rounds)")
    short = []
    for claim_id in args.wanted:
        doc_value, line = args.documented[claim_id]
        where = f"{args.doc}:{line}"
        if claim_id not in measured:
            why = "torch does not import" if "torch" in claim_id else "no Fashion-MNIST in " + FASHION_DIR
            print(f"{claim_id:26s} {doc_value:10.4g} {'-':>9s}  skipped  {where} ({why})")
            continue
        result = verdict(claim_id, measured[claim_id], doc_value)
        print(f"{claim_id:26s} {doc_value:10.4g} {measured[claim_id]:9.4g}  {result:7s}  {where}")
        if result != "ok":
            short.append(f"{claim_id} ({where})")
    print(f"{time.perf_counter() - started:.0f} s")
    if short:
        print(f"more than {100 * (1 - SHORTFALL):.0f}% short of the doc: {', '.join(short)}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
