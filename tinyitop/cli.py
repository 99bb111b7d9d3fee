"""Command line: `python -m tinyitop train [options]` runs one experiment and draws its figures."""
import argparse
import os
import shlex
import signal
import sys

from tinyitop import backend as B
from tinyitop.data import DATASETS, PAD_MODES, DatasetError, is_npz
from tinyitop.init import INIT_METHODS
from tinyitop.options import Parser
from tinyitop.topology import GROWTH_MODES
from tinyitop.config import METHODS, MODEL_NAMES, Config
from tinyitop.report import TrainingDiverged
from tinyitop.rundir import claim, record_drawn
from tinyitop.threads import thread_count
from tinyitop.train import INTERRUPTED, TrainingInterrupted, train



def _int_list(text):
    """'1024,512' -> (1024, 512); empty entries ('10,,20') and sizes < 1 are errors, not skipped."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"layer sizes must be >= 1, got {text!r}")
    return values



def dataset_arg(text):
    """A data set name, or the path of the user's .npz (python -m tinyitop pack-images makes one)."""
    if text in DATASETS or is_npz(text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is neither a data set ({', '.join(DATASETS)}) nor a PATH.npz")


def _name_list(text):
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_train_arguments(parser, defaults=Config()):
    """The train options, in groups a reader scans: data, model, method, optimisation, run folder."""
    d = defaults
    a = parser.add_argument_group("data").add_argument
    a("--dataset", type=dataset_arg, default=d.dataset,
      help=f"{', '.join(DATASETS)} or PATH.npz with train_x/train_y/test_x/test_y (default: %(default)s)")
    a("--data-dir", default=d.data_dir, help="download/cache folder (default: ~/.cache/tinyitop)")
    a("--augment", action=argparse.BooleanOptionalAction, default=d.augment,
      help="random crop + horizontal flip of training images (default: on for cifar10/cifar100, off otherwise)")
    a("--pad-mode", choices=PAD_MODES, default=d.pad_mode,
      help="padding before the random crop; the ITOP reference reflects (default: %(default)s)")
    a("--limit-train", type=int, default=d.limit_train,
      help="use only the first N training samples, for quick runs (default: all)")
    a("--val-fraction", type=float, default=d.val_fraction,
      help="training images held out to pick the best epoch; 0 trains on all (the reference's protocol) "
           "and reports last and best test accuracy (default: %(default)s)")
    a = parser.add_argument_group("model").add_argument
    a("--model", choices=MODEL_NAMES, default=d.model, help="network (default: %(default)s)")
    a("--hidden", type=_int_list, default=d.hidden, help="mlp hidden sizes, comma-separated (default: 1024,512)")
    a("--width", type=float, default=d.width,
      help="conv nets: channel counts x WIDTH, at least 1 channel; 1 is the paper's network (default: %(default)s)")
    a = parser.add_argument_group(
        "method", "sparse training: which weights exist, and how the mask moves (a topology update prunes the "
                  "smallest weights of each sparse layer and grows as many)").add_argument
    a("--method", choices=METHODS, default=d.method,
      help="dense; static (fixed sparse mask); set / rigl (SET or RigL updates: ITOP); gmp, snip, lth, snip-set, "
           "lth-set (the paper's baselines) (default: %(default)s)")
    a("--sparsity", type=float, default=None,
      help=f"fraction of weights absent, in [0, 1); --method dense takes none, or 0 (default: {d.sparsity})")
    a("--init", choices=INIT_METHODS, default=d.init,
      help="per-layer densities: uniform, er (Erdos-Renyi) or erk (Erdos-Renyi-Kernel: small layers denser) "
           "(default: %(default)s)")
    a("--growth", choices=GROWTH_MODES, default=None,
      help="where new weights grow: random or unexplored (never active before) for set, gradient for rigl "
           "(default: random for set, gradient for rigl)")
    a("--update-interval", type=int, default=d.update_interval,
      help="Delta T: iterations between topology updates, not scaled by --multiplier (default: %(default)s)")
    a("--prune-rate", type=float, default=d.prune_rate,
      help="initial prune rate P: fraction of a layer's weights pruned and regrown at an update, cosine to "
           "0.005 (default: %(default)s)")
    a("--dense-layers", type=_name_list, default=d.dense_layers, help="layers kept dense, e.g. fc1,fc3 (default: none)")
    a("--fan-in-scaling", action="store_true",
      help="scale each neuron's init by its actual fan-in (Evci et al. 2020); use for deep, very sparse nets "
           "(default: off)")
    a("--stop-exploration-epoch", type=int, default=d.stop_exploration_epoch,
      help="no topology updates after this epoch (Figure 4's 'w/o exploration'; default: never)")
    a = parser.add_argument_group("optimisation").add_argument
    a("--epochs", type=int, default=d.epochs, help="epochs before the multiplier (default: %(default)s)")
    a("--multiplier", type=int, default=d.multiplier,
      help="extended training: epochs and LR milestones x this (default: %(default)s)")
    a("--batch-size", type=int, default=d.batch_size, help="minibatch size (default: %(default)s)")
    a("--lr", type=float, default=d.lr, help="initial learning rate, x0.1 at 1/2 and 3/4 of training (default: %(default)s)")
    a("--momentum", type=float, default=d.momentum, help="Nesterov momentum (default: %(default)s)")
    a("--weight-decay", type=float, default=d.weight_decay, help="L2 penalty on every parameter (default: %(default)s)")
    a("--seed", type=int, default=d.seed, help="seeds weights, masks, growth, data order and split (default: %(default)s)")
    a = parser.add_argument_group("run folder").add_argument
    a("--out", default=d.out, help="output folder for metrics, checkpoint, figures (default: %(default)s)")
    a("--resume", action="store_true", help="continue from OUT/checkpoint.npz (the same settings and data only; default: off)")
    a("--overwrite", action="store_true", help="replace the run already in OUT: removes only what that run wrote (default: off)")
    a("--no-progress", action="store_true", help="no progress bars (default: shown)")
    a("--no-plots", action="store_true", help="skip the PNG figures at the end (default: drawn)")

class _StdoutThatOutlivesItsReader:
    """sys.stdout that keeps a run going when its reader goes away (`... | head`): the first write
    to a closed pipe points the descriptor at /dev/null, and training goes on to its checkpoint."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def _to_devnull(self):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def check_environment():
    """TINYITOP_BACKEND and TINYITOP_THREADS, checked before any work (a bad value is one line)."""
    B.resolve()
    thread_count()


def prepare_process():
    """SIGTERM (kill, a job scheduler's stop) ends a run or sweep the way Ctrl-C does: the last
    checkpoint kept, one line saying how to continue; and a closed stdout does not kill a run."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        sys.stdout.fileno()          # a real descriptor (not, e.g., a test's captured stream)
    except (AttributeError, OSError, ValueError):
        return
    if not isinstance(sys.stdout, _StdoutThatOutlivesItsReader):
        sys.stdout = _StdoutThatOutlivesItsReader(sys.stdout)


def _exit_status(action, errors=(ValueError, TrainingDiverged, DatasetError, B.BackendError, OSError),
                 resume_command=None):
    """Run `action`; an expected error becomes one `error: ...` line on stderr and exit status 2,
    Ctrl-C one line saying what is safe and how to continue, and exit status 130."""
    try:
        action()
    except TrainingInterrupted as err:
        if resume_command and err.checkpoint_epoch:
            how = f"; continue with: {resume_command}"
        else:                                         # nothing to continue: the same command restarts it
            how = f"; nothing was lost but this run's first epoch: start it again with: {resume_command}" \
                if resume_command else ""
        print(f"{err}{how}", file=sys.stderr)
        return INTERRUPTED
    except KeyboardInterrupt as err:
        print(str(err) or "interrupted", file=sys.stderr)
        return INTERRUPTED
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except MemoryError:           # what the memory check before the run could not foresee
        print("error: out of memory (free memory or this process's ulimit -v): use smaller layers, a higher "
              "sparsity or a smaller --batch-size; a run with a checkpoint continues with --resume", file=sys.stderr)
        return 2
    return 0


def _resume_command(prefix, argv):
    """The command line that continues this run: the same arguments, plus --resume."""
    argv = [a for a in argv if a != "--overwrite"]
    return shlex.join(prefix + argv + ([] if "--resume" in argv else ["--resume"]))


def config_from_args(args):
    """Every train option is a Config field of the same name (`--no-progress` sets `progress`)."""
    settings = {k: v for k, v in vars(args).items() if k in Config.__dataclass_fields__}
    if settings["sparsity"] is None:            # not given: the Config default
        del settings["sparsity"]
    elif args.method == "dense" and args.sparsity != 0:
        raise ValueError(f"--method dense trains every weight: --sparsity {args.sparsity} would be ignored "
                         "(drop it, or choose a sparse method such as --method set)")
    return Config(**settings, progress=not args.no_progress)


def run_and_plot(config, plots=True):
    """Train, then write OUT/training.png, OUT/mask_evolution.png and .gif (if the topology changed)
    and OUT/exploration.png (sparse MLPs). Returns the Run."""
    run = train(config)
    if plots:
        from tinyitop import plots as figures
        pixel_map = config.model == "mlp" and config.method != "dense" and "fc1" in run.exploration.sets
        updated = os.path.exists(os.path.join(config.out, "updates.jsonl"))
        names = ["training.png"] + ["exploration.png"] * pixel_map + ["mask_evolution.png", "mask_evolution.gif"] * updated
        claim(config.out, names)
        drawn = [figures.training(config.out)]
        if pixel_map:
            drawn.append(figures.exploration(run.model, run.exploration, run.data.image_shape,
                                             f"{config.out}/exploration.png", title=figures.run_title(config.out)))
        drawn += [path for path in (figures.mask_evolution(config.out), figures.mask_animation(config.out)) if path]
        record_drawn(config.out, [os.path.basename(path) for path in drawn])     # a later change is the user's
        for path in drawn:
            print(f"figure: {path}")
    return run


def main(argv=None):
    prepare_process()
    if _exit_status(check_environment):      # a bad TINYITOP_BACKEND or TINYITOP_THREADS stops here, in one line
        return 2
    args = build_parser().parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    if args.command == "sweep":
        from tinyitop.sweep import SweepFailed, claim_timeout, parse_shard, run as run_sweep
        again = shlex.join(["python", "-m", "tinyitop"] + argv)
        slurm = (dict(partition=args.partition, time_limit=args.time, gpus=args.gpus, mem=args.mem,
                      cpus=args.cpus_per_task) if args.slurm else None)
        return _exit_status(lambda: run_sweep(args.config, args.root, args.full, args.workers, args.print_commands,
                                              args.aggregate, args.dataset, again,
                                              parse_shard(args.shard) if args.shard else None, args.status, slurm,
                                              claim_timeout(args.claim_timeout)),
                            (ValueError, OSError, SweepFailed))
    if args.command == "pack-images":
        from tinyitop.pack_images import pack
        return _exit_status(lambda: pack(args.folder, args.out, args.normalise_as, args.overwrite),
                            (DatasetError, OSError, ValueError))
    return _exit_status(lambda: run_and_plot(config_from_args(args), plots=not args.no_plots),
                        resume_command=_resume_command(["python", "-m", "tinyitop"], argv))


def build_parser():
    """`python -m tinyitop`'s parser: the train, sweep and pack-images subcommands and their options."""
    parser = Parser(prog="python -m tinyitop",
                                     description="In-Time Over-Parameterization with truly sparse layers")
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train one model")   # each help states its default once
    add_train_arguments(train_parser)
    sweep_parser = commands.add_parser("sweep", help="run a grid of experiments from a JSON config")
    sweep_parser.add_argument("config", help="e.g. experiments/fig3_update_interval.json")
    sweep_parser.add_argument("--root", default="runs/sweeps", help="where run folders go (default: %(default)s)")
    sweep_parser.add_argument("--full", action="store_true", help="the paper's settings instead of the reduced preset")
    sweep_parser.add_argument("--workers", type=int, default=None, help="parallel runs (default: min(2, cores))")
    sweep_parser.add_argument("--print-commands", action="store_true",
                              help="print one train command per run (for Slurm arrays, GNU parallel) and exit")
    sweep_parser.add_argument("--aggregate", action="store_true", help="only aggregate finished runs")
    sweep_parser.add_argument("--dataset", type=dataset_arg, default=None,
                              help="replace the preset's data set, e.g. your own cifar10.npz (default: the preset's)")
    sweep_parser.add_argument("--status", action="store_true",
                              help="list each run as done, running, stale, failed or not started; gather the done")
    sweep_parser.add_argument("--shard", default=None, metavar="I/N",
                              help="run only runs I, I+N, I+2N, ... (default: a Slurm array task's index, else all)")
    cluster = sweep_parser.add_argument_group("cluster", "--slurm writes a job-array script (a task per run) "
                                              "and prints its sbatch line; the options go into it")
    cluster.add_argument("--slurm", action="store_true", help="write SWEEP_FOLDER/slurm.sh and exit")
    cluster.add_argument("--claim-timeout", type=float, default=600, metavar="SECONDS",
                         help="a run claimed from another host whose heartbeat is this old is taken over "
                              "(default: %(default)s; a claim beats every 30 s, or a quarter of this if less)")
    cluster.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's)")
    cluster.add_argument("--time", default=None, help="time limit per run, e.g. 2:00:00 (default: the cluster's)")
    cluster.add_argument("--gpus", default=None, help="GPUs per run, e.g. 1 (default: none)")
    cluster.add_argument("--mem", default=None, help="memory per run, e.g. 8G (default: the cluster's)")
    cluster.add_argument("--cpus-per-task", type=int, default=1, help="cores and threads per run (default: 1)")
    pack_parser = commands.add_parser("pack-images", help="a folder of images -> an .npz data set for --dataset")
    pack_parser.add_argument("folder", help="FOLDER/train/<class>/* and FOLDER/test/<class>/* (PNG or JPEG)")
    pack_parser.add_argument("out", help="the .npz to write, e.g. ~/data/cifar10.npz")
    pack_parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (default: refuse)")
    pack_parser.add_argument("--normalise-as", choices=("cifar10", "cifar100"), default=None,
                             help="store that data set's reference mean/std (default: computed from the images)")
    return parser


def default_out(paper, dataset, quick):
    """A demo's own folder per data set and length (runs/mlp_cifar10_fashion-mnist_quick), so that
    its runs on other data, or quick, never meet a run already there."""
    name = os.path.splitext(os.path.basename(dataset))[0] if dataset.endswith(".npz") else dataset
    return paper.out + (f"_{name}" if dataset != paper.dataset else "") + ("_quick" if quick else "")


def demo_main(description, paper, quick, argv=None, add_arguments=None, adjust=None, after=None):
    """Shared by demos/*.py: paper settings by default, `--quick` overrides for a few minutes' run.

    A demo with options of its own passes `add_arguments(parser)`, `adjust(args, settings) -> settings`
    (the Config fields before the run) and `after(config, run)` (e.g. a report, once the run is done).
    """
    prepare_process()
    if _exit_status(check_environment):
        return 2
    parser = Parser(description=description)
    parser.add_argument("--quick", action="store_true", help=f"a short run: {quick}")
    parser.add_argument("--dataset", type=dataset_arg, default=paper.dataset,
                        help="data set or PATH.npz (default: %(default)s; 'synthetic' for a smoke run)")
    parser.add_argument("--data-dir", default=None, help="download/cache folder (default: ~/.cache/tinyitop)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="crop + flip (default: on for cifar10/cifar100; give --augment for a CIFAR .npz)")
    parser.add_argument("--out", default=paper.out, help=f"output folder (default: {paper.out}, with _DATASET "
                        "for another data set and _quick for --quick)")
    parser.add_argument("--resume", action="store_true", help="continue a killed run from OUT/checkpoint.npz")
    parser.add_argument("--overwrite", action="store_true", help="replace the run already in OUT")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    out = args.out if args.out != paper.out else default_out(paper, args.dataset, args.quick)
    settings = {**paper.to_json(), **(quick if args.quick else {}), "dataset": args.dataset,
                "data_dir": args.data_dir, "augment": args.augment, "out": out, "resume": args.resume, "overwrite": args.overwrite,
                "progress": not args.no_progress}
    if adjust is not None:
        settings = adjust(args, settings)
    argv = sys.argv[1:] if argv is None else list(argv)

    def run():
        config = Config(**settings)
        trained = run_and_plot(config)
        if after is not None:
            after(config, trained)
    return _exit_status(run, resume_command=_resume_command(["python", sys.argv[0]], argv))
