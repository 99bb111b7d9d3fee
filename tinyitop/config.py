"""One experiment's settings (`Config`), checked before any work: options, and memory for the model.

Methods: dense, static (a fixed sparse mask), set (Mocanu et al. 2018; ITOP: Liu et al. 2021),
rigl (Evci et al. 2020), and the baselines of `baselines.py`: gmp, snip, snip-set, lth, lth-set.
"""
import dataclasses
import math

from tinyitop.data import DATASETS, PAD_MODES, is_npz
from tinyitop.init import INIT_METHODS
from tinyitop.models import MODELS, check_width
from tinyitop.topology import GROWTH_MODES

METHODS = ("dense", "static", "set", "rigl", "gmp", "snip", "snip-set", "lth", "lth-set")
# Methods that change the topology during training, and the rule they explore by.
EXPLORING = {"set": "set", "rigl": "rigl", "snip-set": "set", "lth-set": "set"}
# GMP prunes from 10% to 60% of training, then fine-tunes (a common choice after Zhu & Gupta 2017).
GMP_START, GMP_END = 0.1, 0.6
MODEL_NAMES = ("mlp",) + tuple(MODELS)


@dataclasses.dataclass
class Config:
    """One experiment. Defaults are the paper's MLP settings on CIFAR-10 (Liu et al. 2021)."""
    model: str = "mlp"
    hidden: tuple = (1024, 512)
    width: float = 1.0              # conv nets: channel counts x width (1.0: the paper's network)
    dataset: str = "cifar10"        # a name from data.DATASETS or the path of the user's .npz
    data_dir: str = None
    augment: bool = None            # crop + flip; None: on for CIFAR-10/100, off otherwise
    pad_mode: str = "reflect"       # the crop's padding: reflect (the reference) or zero
    method: str = "set"
    growth: str = None              # None: random for set, gradient for rigl
    sparsity: float = 0.95
    init: str = "erk"
    dense_layers: tuple = ()
    fan_in_scaling: bool = False
    update_interval: int = 1500     # Delta T, in iterations; not scaled by the multiplier
    prune_rate: float = 0.5         # initial prune rate P of the cosine schedule
    stop_exploration_epoch: int = None
    epochs: int = 200
    multiplier: int = 1             # extended training: epochs and LR milestones x multiplier
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    limit_train: int = None
    val_fraction: float = 0.1       # 0: train on all training images, no best-epoch selection
    out: str = "runs/default"
    resume: bool = False
    overwrite: bool = False         # a fresh run may replace the run already in `out`
    progress: bool = True

    def __post_init__(self):
        if isinstance(self.hidden, (list, tuple)):          # anything else: `validate` says what is wrong
            self.hidden = tuple(self.hidden)
        if isinstance(self.dense_layers, (list, tuple)):
            self.dense_layers = tuple(self.dense_layers)
        if self.growth is None and self.method in EXPLORING:
            self.growth = "gradient" if self.method == "rigl" else "random"

    @property
    def total_epochs(self):
        return self.epochs * self.multiplier

    def steps_per_epoch(self, n_train):
        """Iterations in an epoch of `n_train` training images (the last batch may be smaller)."""
        return math.ceil(n_train / self.batch_size)

    def type_problems(self):
        """Settings of the wrong kind (a sweep config's "three" for epochs, null, 16 for [16]), each named."""
        names = {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
                 tuple: "a list"}
        problems = []
        for field in dataclasses.fields(self):
            value, kind = getattr(self, field.name), field.type
            if value is None and field.default is None:
                continue
            if kind is float:
                right = isinstance(value, (int, float)) and not isinstance(value, bool)
            elif kind is int:
                right = isinstance(value, int) and not isinstance(value, bool)
            elif kind is tuple:
                right = isinstance(value, tuple) and all(
                    isinstance(v, str) if field.name == "dense_layers" else isinstance(v, int) and not isinstance(v, bool)
                    for v in value)
            else:
                right = isinstance(value, kind)
            if not right:
                items = " of layer names" if field.name == "dense_layers" else " of whole numbers" if kind is tuple else ""
                problems.append(f"{field.name} must be {names[kind]}{items}, got {value!r}")
        return problems

    def validate(self):
        """Reject bad options before any work, saying why."""
        problems = self.type_problems()
        if problems:                    # the checks below compare values: they need the right kinds
            raise ValueError("bad options: " + "; ".join(problems))
        if self.model not in MODEL_NAMES:
            problems.append(f"unknown model {self.model!r} (choose from {', '.join(MODEL_NAMES)})")
        if self.dataset not in DATASETS and not is_npz(self.dataset):
            problems.append(f"unknown dataset {self.dataset!r} (choose from {', '.join(DATASETS)} or a PATH.npz)")
        if self.pad_mode not in PAD_MODES:
            problems.append(f"unknown pad mode {self.pad_mode!r} (choose from {', '.join(PAD_MODES)})")
        if self.method not in METHODS:
            problems.append(f"unknown method {self.method!r} (choose from {', '.join(METHODS)})")
        if self.init not in INIT_METHODS:
            problems.append(f"unknown init {self.init!r} (choose from {', '.join(INIT_METHODS)})")
        if not 0 <= self.sparsity < 1:
            problems.append(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.method != "dense" and self.method in METHODS and self.sparsity == 0:
            problems.append(f"method {self.method!r} needs sparsity > 0 (use --method dense)")
        if self.growth is not None:
            if self.growth not in GROWTH_MODES:
                problems.append(f"unknown growth {self.growth!r} (choose from {', '.join(GROWTH_MODES)})")
            elif self.method not in EXPLORING:
                problems.append(f"method {self.method!r} does not grow connections; drop --growth")
            elif self.method != "rigl" and self.growth == "gradient":
                problems.append(f"method {self.method!r} grows by 'random' or 'unexplored'; "
                                "gradient growth is --method rigl")
            elif self.method == "rigl" and self.growth != "gradient":
                problems.append("method 'rigl' grows by 'gradient'")
        if self.update_interval < 1:
            problems.append(f"update interval must be >= 1 iteration, got {self.update_interval}")
        if not 0 < self.prune_rate < 1:
            problems.append(f"prune rate must be in (0, 1), got {self.prune_rate}")
        for name in ("epochs", "multiplier", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        numbers = {k: getattr(self, k) for k in ("lr", "momentum", "weight_decay", "sparsity", "prune_rate")}
        not_finite = [f"{k} = {v}" for k, v in numbers.items() if not math.isfinite(v)]
        if not_finite:
            problems.append(f"settings must be finite numbers: {', '.join(not_finite)}")
        elif self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            problems.append("need lr > 0, weight decay >= 0 and momentum in [0, 1)")
        elif self.lr * self.weight_decay >= 1:       # each step would scale every weight by 1 - lr wd <= 0
            problems.append(f"weight decay {self.weight_decay:g} with lr {self.lr:g}: lr x weight decay must be < 1, "
                            "else each step flips every weight's sign and the run blows up")
        if self.limit_train is not None and self.limit_train < 2:
            problems.append(f"limit_train must be >= 2, got {self.limit_train}")
        if not 0 <= self.val_fraction < 1:
            problems.append(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.stop_exploration_epoch is not None and self.stop_exploration_epoch < 0:
            problems.append(f"stop_exploration_epoch must be >= 0, got {self.stop_exploration_epoch}")
        try:
            check_width(self.width)
        except ValueError as err:
            problems.append(str(err))
        else:
            if self.model == "mlp" and self.width != 1.0:
                problems.append("width scales conv nets' channels; an mlp's sizes are --hidden")
        if self.model == "mlp" and not self.hidden:
            problems.append("mlp needs at least one hidden layer size")
        if any(h < 1 for h in self.hidden):
            problems.append(f"hidden layer sizes must be >= 1, got {list(self.hidden)}")
        if self.seed < 0:
            problems.append(f"seed must be >= 0, got {self.seed}")
        if problems:
            raise ValueError("bad options: " + "; ".join(problems))

    def to_json(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# --resume continues the same experiment: every setting must match the checkpoint's, except these,
# which change where and how a run is shown, not what it computes.
RESUME_FREE = ("data_dir", "out", "resume", "overwrite", "progress")


def changed_settings(saved, config):
    """[(setting, saved value, value now)] for every setting that changes the result (not
    RESUME_FREE) and differs between a saved run's config (JSON) and `config`."""
    now = config.to_json()
    defaults = Config().to_json()      # a setting added later: older runs had its default
    return [(k, saved.get(k, defaults[k]), v) for k, v in now.items()
            if k not in RESUME_FREE and saved.get(k, defaults[k]) != v]


def _proc_kib(path, key):
    """A `key: N kB` line of a /proc file, in bytes, or None."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _available_bytes():
    """Memory this process can still get: the machine's MemAvailable, and no more than what its own
    address-space limit (ulimit -v) leaves above what it already maps; None where neither is known."""
    import resource
    free = _proc_kib("/proc/meminfo", "MemAvailable")
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        left = limit - (_proc_kib("/proc/self/status", "VmSize") or 0)
        free = left if free is None else min(free, left)
    return free


# demos/million_neurons.py --quick peaked at 1.89 GiB for 8.0 million active weights (data included):
# weights, gradients, momentum, index caches, explored sets and a topology update's temporaries.
SPARSE_PEAK_BYTES_PER_WEIGHT = 225


def check_memory(config, data):
    """Refuse, before allocating, a model whose weights and optimizer state alone exceed the memory
    this machine has (e.g. --hidden 2000000000): one line saying how much it would need."""
    if config.model == "mlp":
        sizes = [data.in_features, *config.hidden, data.num_classes]
        shapes = [(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1)]
    else:                                       # conv nets: fixed sizes, only the classifier grows
        shapes = [(512 * 4, data.num_classes), (int(11_000_000 * max(config.width, 1) ** 2), 1)]
    dense_numel = sum(a * b for a, b in shapes)
    if config.method in ("dense", "gmp", "snip", "snip-set", "lth", "lth-set"):
        need = dense_numel * 4 * 3                 # weight, gradient, momentum (float32); dense at some point
    else:       # sparse from scratch: the peak per active weight measured in training (docs/RUNS.md)
        need = (1 - config.sparsity) * dense_numel * SPARSE_PEAK_BYTES_PER_WEIGHT
    available = _available_bytes()
    if available is not None and need > available:
        raise ValueError(f"this model needs about {need / 2 ** 30:.1f} GiB to train ({dense_numel:,} weights, method "
                         f"{config.method}), more than the {available / 2 ** 30:.1f} GiB this process can still get "
                         "(free memory, and its ulimit -v): use smaller layers (--hidden, or --width for a conv net) or a "
                         "higher --sparsity")
