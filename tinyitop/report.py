"""What a run reports: evaluation, the epoch row of metrics.jsonl, the update row of updates.jsonl,
and summary.json at the end (the best-validation epoch's test accuracy, R_s, FLOPs)."""
import dataclasses
import json
import math
import os

from tinyitop import backend as B
from tinyitop.atomic import parse_json
from tinyitop.config import EXPLORING, Config
from tinyitop.data import batches
from tinyitop.losses import SoftmaxCrossEntropy, accuracy_count
from tinyitop.metrics import NUMBER, OPTIONAL_NUMBER, check_row, format_rs, peak_rss_mb, progress
from tinyitop.rundir import write_json
from tinyitop.topology import prune_rate_at, sparse_layers


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def evaluate(model, x, y, data, batch_size, show_progress=False, description="evaluating"):
    """Mean loss and accuracy on (x, y) in eval mode; one host sync at the end."""
    if len(x) == 0:
        return None, None
    model.eval()
    loss_fn = SoftmaxCrossEntropy()
    loss_sum, correct = 0.0, 0
    for images, labels in progress(batches(x, y, batch_size, data.mean, data.std), math.ceil(len(x) / batch_size),
                                   show_progress, description):
        logits = model.forward(images)
        loss_sum = loss_sum + loss_fn.forward(logits, labels) * labels.shape[0]
        correct = correct + accuracy_count(logits, labels)
    model.train()
    return B.scalar(loss_sum) / len(x), B.scalar(correct) / len(x)   # sync point


def check_finite(loss, epoch, state, folder, what="loss"):
    """A NaN or infinite loss (training's, or an evaluation's: `what`) ends the run; nothing of it is kept."""
    if loss is not None and not math.isfinite(loss):
        kept = (f"the last good checkpoint, {folder.checkpoint} (after epoch {state['epoch']}), is kept"
                if state["epoch"] else "no checkpoint was written yet")
        raise TrainingDiverged(f"{what} became {loss} in epoch {epoch + 1}: training diverged; {kept}. "
                               f"Start again with a lower --lr and --overwrite (or another --out): "
                               f"--resume continues only the same settings")


def layer_stats(model, exploration):
    """Per sparse layer: nnz, density, R_s and reliable R_s (plain numbers for the logs)."""
    layers = sparse_layers(model)
    return {"nnz_per_layer": {n: layer.weight.nnz for n, layer in layers.items()},
            "density_per_layer": {n: layer.weight.density for n, layer in layers.items()},
            "rs_per_layer": exploration.rs_per_layer(),
            "rs_reliable_per_layer": exploration.rs_reliable_per_layer()}


def update_row(setup, step, epoch, rate):
    """updates.jsonl's row for the topology update at iteration `step`: R_s, and the first layer's
    mask corner (for mask_evolution.png)."""
    first = next(iter(setup.updater.layers))
    exploration = setup.exploration
    return {"iteration": step, "epoch": epoch + 1, "prune_rate": rate, "rs": exploration.rs(),
            "rs_reliable": exploration.rs_reliable(), "rs_per_layer": exploration.rs_per_layer(),
            "crop_layer": first, "crop_axes": matrix_words(setup.updater.layers[first]),
            **mask_crop(setup.updater.layers[first].weight, setup.updater.last_update[first][2])}


LINEAR_WORDS = {"layer": "a linear layer", "rows": "output units", "columns": "input units"}


def matrix_words(layer):
    """What a sparse layer is, and what the rows and columns of its weight matrix are, in words (for
    the figures): a conv's matrix is (out channels, in channels x kh x kw), im2col's layout."""
    if hasattr(layer, "kernel_size"):
        kh, kw = layer.kernel_size
        return {"layer": f"a {kh}x{kw} convolution", "rows": "output channels",
                "columns": f"(input channel, {kh}x{kw} kernel offset) pairs, {layer.in_channels} x {kh * kw}"}
    return LINEAR_WORDS


def epoch_row(config, setup, epoch, step, last_rate, train, val, test, train_seconds, seconds, n_train):
    """metrics.jsonl's row for one epoch. train/val/test are (loss, accuracy) pairs."""
    if last_rate is None:
        last_rate = prune_rate_at(step, setup.total_steps, config.prune_rate) if config.method in EXPLORING else 0.0
    return {"epoch": epoch + 1, "iteration": step, "lr": setup.optimizer.lr, "prune_rate": last_rate,
            "train_loss": train[0], "train_acc": train[1], "val_loss": val[0], "val_acc": val[1],
            "test_loss": test[0], "test_acc": test[1], "rs": setup.exploration.rs(),
            "train_flops_rel": setup.flops.train_relative(), "test_flops_rel": setup.flops.test_relative(),
            "rs_reliable": setup.exploration.rs_reliable(), **layer_stats(setup.model, setup.exploration),
            "seconds": seconds, "train_seconds": train_seconds, "samples_per_s": n_train / seconds,
            "peak_rss_mb": peak_rss_mb()}


# What summary.json holds (summarise writes it; sweeps, figures and the experiments/ scripts read it), and
# the JSON types: every reader goes through read_summary, so a damaged file is one line naming it.
SUMMARY_FIELDS = {"best_epoch": (int, type(None)), "best_val_acc": OPTIONAL_NUMBER, "test_acc_at_best_val": OPTIONAL_NUMBER,
                  "last_test_acc": NUMBER, "best_test_acc": NUMBER, "final_rs": NUMBER, "final_rs_reliable": NUMBER,
                  "final_train_acc": NUMBER, "train_flops_rel": NUMBER, "test_flops_rel": NUMBER, "epochs": int,
                  "iterations": int, "config": dict}


class TornSummary(ValueError):
    """summary.json is not JSON: written in part (a crash mid-write, a full disk) or damaged."""


def read_summary(path, remedy="move it away, or train the run again"):
    """A finished run's summary.json, checked: every field above, of its type, and a config that names
    every setting of a run, each of the right kind. OSError if it cannot be opened; TornSummary if it
    is not JSON; ValueError for anything else; each names the file and the remedy."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        summary = parse_json(raw.decode("utf-8"), path)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TornSummary(f"{path} is not valid JSON ({type(err).__name__}): the file is damaged; {remedy}") from None
    check_row(summary, SUMMARY_FIELDS, path, remedy)
    settings = summary["config"]
    names = {field.name for field in dataclasses.fields(Config)}
    unknown = sorted(names ^ set(settings))
    try:
        if unknown:
            raise ValueError(f"settings missing or unknown: {', '.join(unknown)}")
        Config(**settings).validate()                  # kinds and values: what a run could have been given
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} has a damaged \"config\" ({err}); {remedy}") from None
    return summary


def summarise(config, state, metrics, step, log):
    """summary.json (written atomically) from the logged epochs; returns it."""
    rows = metrics.read()
    no_val = state["best_epoch"] is None       # --val-fraction 0: nothing to select an epoch by
    summary = {"best_epoch": state["best_epoch"], "best_val_acc": None if no_val else state["best_val_acc"],
               "test_acc_at_best_val": state["best_test_acc"], "last_test_acc": rows[-1]["test_acc"],
               "best_test_acc": max(r["test_acc"] for r in rows),   # the reference's "best": chosen on test
               "final_rs": rows[-1]["rs"], "final_rs_reliable": rows[-1]["rs_reliable"],
               "final_train_acc": rows[-1]["train_acc"],
               # LTH also paid for training its dense twin: one dense budget on top.
               "train_flops_rel": rows[-1]["train_flops_rel"] + (1.0 if config.method.startswith("lth") else 0.0),
               "test_flops_rel": rows[-1]["test_flops_rel"],
               "epochs": config.total_epochs, "iterations": step, "config": config.to_json()}
    if config.method == "gmp":      # an epoch before pruning ended has more weights than the model reported
        summary["best_epoch_chosen_among"] = "epochs after pruning ended (at the final sparsity)"
    write_json(os.path.join(config.out, "summary.json"), summary)
    if no_val:
        log(f"no validation set: last epoch test acc {summary['last_test_acc']:.4f}; best test acc over epochs "
            f"{summary['best_test_acc']:.4f} (chosen on the test set, optimistic); final R_s {format_rs(summary['final_rs'])}")
    else:
        log(f"best val acc {summary['best_val_acc']:.4f} at epoch {summary['best_epoch']}: "
            f"test acc {summary['test_acc_at_best_val']:.4f}; last epoch test acc {summary['last_test_acc']:.4f}; "
            f"final R_s {format_rs(summary['final_rs'])}"
            + (" (GMP: best epoch chosen among those at the final sparsity)" if config.method == "gmp" else ""))
    return summary


def mask_crop(weight, grown, size=48):
    """The top-left size x size corner of a layer's mask, for the mask-evolution figure: the active
    positions and the ones grown at this update, as flat indices into the (rows, cols) crop."""
    xp = B.xp
    n_rows, n_cols = weight.shape
    rows, cols = min(size, n_rows), min(size, n_cols)

    def inside(flat):
        r, c = flat // n_cols, flat % n_cols
        keep = (r < rows) & (c < cols)
        return B.to_host((r[keep] * cols + c[keep]).astype(xp.int64)).tolist()   # sync point, per update
    return {"crop_shape": [rows, cols], "crop_active": inside(weight.flat_positions()),
            "crop_grown": inside(grown)}
