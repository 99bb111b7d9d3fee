"""PyTorch twin of a tinyitop conv run: the same data, batches and settings, trained by PyTorch.

A check of conv + BatchNorm (+ residual) training end to end: the twin of a reduced CIFAR-10 run
(experiments/cifar10_vgg_itop.json) should end within about a point of tinyitop's test accuracy. The batches are tinyitop's own (same split, order, crops and flips, from the same seed);
the weights, masks and growth draws are PyTorch's, so the two differ as two seeds do. SET here is
the ITOP reference's way: a dense weight times a 0/1 mask, with ERK densities from tinyitop.init
(static: the same masks, never updated).
Needs torch (a separate venv; never a tinyitop dependency):

    python benchmarks/torch_conv_twin.py RUN_FOLDER [--threads 1]

RUN_FOLDER is a finished tinyitop run (its summary.json gives every setting); the twin's epoch log
and summary are printed as JSON lines and compared with the run's at the end.
"""
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
os.environ.setdefault("TINYITOP_BACKEND", "numpy")
import numpy as np  # noqa: E402

from tinyitop.data import batches, load, split_validation  # noqa: E402
from tinyitop.init import layer_densities  # noqa: E402
from tinyitop.optim import MultiStepLR  # noqa: E402
from tinyitop.options import Parser, fail, whole_number  # noqa: E402
from tinyitop.report import read_summary  # noqa: E402
from tinyitop.topology import prune_rate_at  # noqa: E402

class SetMasks:
    """The reference's SET: masks at ERK densities; every Delta T, per layer, drop the k smallest
    active |w| and grow k at random among the inactive, new weights and momentum at zero."""

    def __init__(self, torch, weights, sparsity, generator):
        self.torch, self.weights, self.generator = torch, weights, generator
        densities = layer_densities({i: tuple(w.shape) for i, w in enumerate(weights)}, 1 - sparsity, "erk")
        self.masks = []
        for i, w in enumerate(weights):
            mask = torch.zeros(w.numel(), dtype=torch.bool)
            mask[torch.randperm(w.numel(), generator=generator)[:max(1, round(densities[i] * w.numel()))]] = True
            self.masks.append(mask.view_as(w))
        self.explored = [m.clone() for m in self.masks]
        self.apply()

    def apply(self):
        with self.torch.no_grad():
            for w, m in zip(self.weights, self.masks):
                w.mul_(m)

    def update(self, rate, optimizer):
        torch = self.torch
        with torch.no_grad():
            for w, mask, explored in zip(self.weights, self.masks, self.explored):
                active = mask.view(-1).nonzero().view(-1)
                if active.numel() == w.numel():
                    continue                                              # dense by ERK
                k = math.ceil(rate * active.numel())
                drop = active[torch.topk(w.view(-1)[active].abs(), k, largest=False).indices]
                mask.view(-1)[drop] = False
                free = (~mask.view(-1)).nonzero().view(-1)
                grow = free[torch.randperm(free.numel(), generator=self.generator)[:k]]
                mask.view(-1)[grow] = True
                explored.view(-1)[grow] = True
                w.view(-1)[grow] = 0
                state = optimizer.state.get(w, {})
                if "momentum_buffer" in state and state["momentum_buffer"] is not None:
                    state["momentum_buffer"].view(-1)[grow] = 0
                    state["momentum_buffer"].mul_(mask)
        self.apply()

    def rs(self):
        return sum(int(e.sum()) for e in self.explored) / sum(e.numel() for e in self.explored)


def evaluate(torch, model, x, y, data, batch_size):
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in batches(x, y, batch_size, data.mean, data.std):
            correct += int((model(torch.from_numpy(images)).argmax(1) == torch.from_numpy(labels)).sum())
    model.train()
    return correct / len(x)


TORCH_SEEDS = 2 ** 64                # torch.manual_seed takes a 64-bit seed


def parse(argv=None):
    """The options and the run's settings, checked before torch is imported."""
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished tinyitop run folder (summary.json)")
    parser.add_argument("--threads", type=whole_number(1, 256), default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--torch-seed", type=whole_number(0, TORCH_SEEDS - 1), default=None,
                        help="seed of PyTorch's weights and masks only; the batches stay the run's (default: the run's seed)")
    args = parser.parse_args(argv)
    path = os.path.join(args.run, "summary.json")
    try:
        args.summary = read_summary(path, remedy="give a finished run's folder")
    except OSError as err:
        fail(f"{path} cannot be read ({err.strerror}): give a finished run's folder")
    except ValueError as err:                                # names the file and what is wrong in it
        fail(str(err))
    c = args.summary["config"]
    if c["model"] != "vgg16" or c["method"] not in ("dense", "static", "set"):
        fail(f"the twin trains vgg16 dense, static or set runs; {args.run} is {c['model']} {c['method']}")
    if args.torch_seed is None and c["seed"] >= TORCH_SEEDS:
        fail(f"the run's seed {c['seed']} is too large for torch.manual_seed: give --torch-seed")
    if args.summary["test_acc_at_best_val"] is None:
        fail(f"{args.run} was trained without a validation split: the twin is compared at the best validation epoch")
    return args


def main(argv=None):
    args = parse(argv)
    summary, c = args.summary, args.summary["config"]
    try:
        import torch
        import torch.nn as nn
        import torch.nn.functional as F
    except ImportError:
        print("error: torch is not installed here: run this in a venv with torch (pip install torch)", file=sys.stderr)
        raise SystemExit(2)
    torch.set_num_threads(args.threads)
    torch_seed = c["seed"] if args.torch_seed is None else args.torch_seed
    torch.manual_seed(torch_seed)
    data = load(c["dataset"], c["data_dir"])
    (train_x, train_y), (val_x, val_y) = split_validation(data.train_x, data.train_y, c["val_fraction"], c["seed"])
    if c["limit_train"]:
        train_x, train_y = train_x[:c["limit_train"]], train_y[:c["limit_train"]]
    import torch_reference                     # the benchmarks' PyTorch twins (same networks, any width)
    model = torch_reference.vgg16(data.num_classes, width=c["width"])
    optimizer = torch.optim.SGD(model.parameters(), lr=c["lr"], momentum=c["momentum"], nesterov=True,
                                weight_decay=c["weight_decay"])
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    sparse = SetMasks(torch, weights, c["sparsity"], torch.Generator().manual_seed(torch_seed)) \
        if c["method"] in ("set", "static") else None          # static: the same masks, never updated
    lr_at = MultiStepLR(c["lr"], c["epochs"], c["multiplier"])
    data_rng = np.random.default_rng(c["seed"])
    augment = data.augment if c["augment"] is None else c["augment"]
    total = math.ceil(len(train_x) / c["batch_size"]) * c["epochs"] * c["multiplier"]
    step, best = 0, (-1.0, None, None)
    for epoch in range(c["epochs"] * c["multiplier"]):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(epoch)
        started = time.perf_counter()
        for images, labels in batches(train_x, train_y, c["batch_size"], data.mean, data.std, data_rng, augment,
                                      c["pad_mode"]):
            step += 1
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(torch.from_numpy(images)), torch.from_numpy(labels)).backward()
            optimizer.step()
            if sparse is not None:
                sparse.apply()
                if c["method"] == "set" and step % c["update_interval"] == 0 and step < total:
                    sparse.update(prune_rate_at(step, total, c["prune_rate"]), optimizer)
        val = evaluate(torch, model, val_x, val_y, data, c["batch_size"])
        test = evaluate(torch, model, data.test_x, data.test_y, data, c["batch_size"])
        if val > best[0]:
            best = (val, epoch + 1, test)
        print(json.dumps({"epoch": epoch + 1, "val_acc": val, "test_acc": test,
                          "rs": sparse.rs() if sparse else 1.0, "seconds": time.perf_counter() - started}), flush=True)
    result = {"torch_seed": torch_seed, "twin_best_epoch": best[1], "twin_test_acc_at_best_val": best[2], "twin_last_test_acc": test,
              "tinyitop_best_epoch": summary["best_epoch"], "tinyitop_test_acc_at_best_val": summary["test_acc_at_best_val"],
              "tinyitop_last_test_acc": summary["last_test_acc"],
              "difference_at_best_val": best[2] - summary["test_acc_at_best_val"]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
