"""Figures of a run (matplotlib is imported here only, so `import tinyitop` stays light).

- training(): learning curves, R_s over training (per update and per epoch), prune rate.
- exploration(): ITOP's Figure-1 idea for an MLP's input layer: per input pixel, the fraction of
  its possible connections active now and ever explored (one shared scale), plus per sparse layer
  active vs explored.
- mask_evolution(): a fixed corner of the first sparse layer's mask at several updates, the newly
  grown connections highlighted: exploration seen rather than read about; mask_animation(): the
  same corner at every update as an animated GIF, beside R_s and reliable R_s growing.
Each figure's title names the run (model, data, method, sparsity, Delta T).
"""
import os

import numpy as np

from tinyitop import backend as B
from tinyitop.metrics import format_rs, read_jsonl
from tinyitop.report import LINEAR_WORDS, read_summary


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")          # files only; no display needed
    import matplotlib.pyplot as plt
    return plt


def _run_config(run_dir):
    """The run's settings from its summary.json ({} before the run has finished)."""
    path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(path):
        return {}
    return read_summary(path)["config"]          # damaged: a ValueError naming it


def run_title(run_dir):
    """'mlp 1024-512 on cifar10: set (random growth), sparsity 0.95, erk, Delta T 1500, 200 epochs'."""
    c = _run_config(run_dir)
    if not c:
        return os.path.basename(os.path.normpath(run_dir))
    data = os.path.splitext(os.path.basename(c["dataset"]))[0]
    method = c["method"] + (f" ({c['growth']} growth)" if c.get("growth") else "")
    layout = {"erk": "ERK", "er": "ER", "uniform": "uniform"}.get(c["init"], c["init"])
    sparse = "" if c["method"] == "dense" else f", sparsity {c['sparsity']:.6g} ({layout} layer densities)"
    exploring = c["method"] in ("set", "rigl", "snip-set", "lth-set", "gmp")
    interval = f", Delta T {c['update_interval']}" if exploring else ""
    hidden = ("-".join(str(h) for h in c["hidden"]) if c["model"] == "mlp"
              else f"width {c['width']:g}" if c.get("width", 1.0) != 1.0 else "")
    return f"{c['model']} {hidden} on {data}: {method}{sparse}{interval}, {c['epochs'] * c['multiplier']} epochs"


def _no_update_reason(rows, run_dir):
    """Why a run has no topology update, for the empty panels."""
    config = _run_config(run_dir)
    if config.get("method") in ("dense", "static", "snip", "lth"):
        return f"no topology update: method '{config['method']}' keeps its mask fixed"
    iterations = rows[-1]["iteration"] if rows else 0
    if config.get("update_interval", 0) > iterations:
        return (f"no topology update in this run:\nDelta T ({config['update_interval']}) > iterations ({iterations})")
    return "no topology update in this run"


def training(run_dir, path=None):
    """Three panels from metrics.jsonl / updates.jsonl of `run_dir`; returns the PNG path."""
    plt = _pyplot()
    rows = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    updates = read_jsonl(os.path.join(run_dir, "updates.jsonl"))
    epochs = [r["epoch"] for r in rows]
    fig, (acc_ax, rs_ax, p_ax) = plt.subplots(1, 3, figsize=(15, 4.4))
    style = dict(marker="o", ms=3)                       # markers: a one-epoch run is a point, not a line
    acc_ax.plot(epochs, [r["train_acc"] for r in rows], label="train", **style)
    if any(r["val_acc"] is not None for r in rows):      # none with --val-fraction 0
        acc_ax.plot(epochs, [r["val_acc"] for r in rows], label="validation", **style)
    acc_ax.plot(epochs, [r["test_acc"] for r in rows], label="test", **style)
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Learning curves")
    acc_ax.legend()
    acc_ax.grid(alpha=0.3)
    iterations_per_epoch = rows[0]["iteration"] / rows[0]["epoch"] if rows else 1
    if updates:
        it = np.array([u["iteration"] for u in updates]) / iterations_per_epoch
        rs_ax.plot(it, [u["rs"] for u in updates], ".-", ms=3, label="R_s at each update")
        rs_ax.plot(it, [u["rs_reliable"] for u in updates], ".-", ms=3, label="reliable R_s")
        p_ax.plot(it, [u["prune_rate"] for u in updates], ".-", ms=3)
    else:
        reason = _no_update_reason(rows, run_dir)
        for ax in (rs_ax, p_ax):
            ax.text(0.5, 0.3, reason, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.35")
    rs_ax.plot(epochs, [r["rs"] for r in rows], "k--", lw=1, marker="o", ms=3, label="R_s at epoch end")
    rs_ax.set(xlabel="epoch", ylabel="explored fraction of all weights", title="ITOP rate R_s")
    rs_ax.legend(fontsize=8)
    rs_ax.grid(alpha=0.3)
    p_ax.set(xlabel="epoch", ylabel="fraction of active weights pruned and regrown", title="Prune rate at each update")
    p_ax.grid(alpha=0.3)
    fig.suptitle(run_title(run_dir), fontsize=11)
    fig.tight_layout()
    path = path or os.path.join(run_dir, "training.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def exploration(model, exploration_state, image_shape, path, layer_name="fc1", title=None):
    """Figure-1-style picture: per input pixel, the fraction of its possible connections that is
    active now and that was ever explored, on one colour scale; then active vs explored per layer.

    image_shape (C, H, W) of the input; the input layer's columns are pixels in C-H-W order, so a
    pixel has out_features * C possible connections.
    """
    plt = _pyplot()
    from tinyitop.topology import sparse_layers
    layers = sparse_layers(model)
    if layer_name not in layers:
        raise ValueError(f"{layer_name} is not a sparse layer of this model")
    weight = layers[layer_name].weight
    n_out, n_cols = weight.shape
    if n_cols != int(np.prod(image_shape)):
        raise ValueError(f"{layer_name} has {n_cols} inputs, not an image of shape {image_shape}")
    active_cols = B.to_host(weight.csr.indices)
    explored_cols = B.to_host(exploration_state.sets[layer_name].positions) % n_cols
    c, h, w = image_shape
    possible = n_out * c                                                                 # per pixel
    now = np.bincount(active_cols, minlength=n_cols).reshape(c, h, w).sum(axis=0) / possible     # (H, W)
    ever = np.bincount(explored_cols, minlength=n_cols).reshape(c, h, w).sum(axis=0) / possible  # (H, W)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [1, 1, 1.4]})
    for ax, values, label in ((axes[0], now, "active now"), (axes[1], ever, "ever explored")):
        # Each map has its own scale: at high sparsity "active now" is far below "ever explored".
        image = ax.imshow(values, cmap="viridis", vmin=0, vmax=max(float(values.max()), 1e-12))
        ax.set_title(f"{layer_name}: {label}\n(mean {format_rs(values.mean())} of the {possible} weights from each "
                     f"input pixel into {layer_name})", fontsize=10)
        ax.axis("off")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=f"fraction of a pixel's {possible} weights into {layer_name}")
    names = [n for n in layers if layers[n].weight.density < 1]          # what can be explored
    dense = [n for n in layers if n not in names]
    active = [layers[n].weight.density for n in names]
    explored = [exploration_state.sets[n].count() / exploration_state.sets[n].numel for n in names]
    x = np.arange(len(names))
    bars_active = axes[2].bar(x - 0.2, active, 0.4, label="active (density)")
    bars_explored = axes[2].bar(x + 0.2, explored, 0.4, label="explored (R_s of the layer)")
    axes[2].bar_label(bars_active, labels=[format_rs(v) for v in active], fontsize=7)   # 4 decimals, or
    axes[2].bar_label(bars_explored, labels=[format_rs(v) for v in explored], fontsize=7)   # 3 digits if tiny
    axes[2].set_xticks(x, names, rotation=45 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    # Log scale: layers differ by orders of magnitude (ERK gives small layers far higher densities).
    axes[2].set_yscale("log")
    axes[2].set(ylabel="fraction of the layer's weights (log scale)", title="Sparse layers: active vs explored",
                ylim=(min(active + explored) / 3, min(1.0, max(explored + active)) * 4))
    if dense:
        axes[2].set_xlabel(f"not shown: {', '.join(dense)} (dense by ERK, always fully explored)", fontsize=8)
    axes[2].legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def mask_evolution(run_dir, path=None, panels=6):
    """A fixed top-left crop of the first sparse layer's mask after several topology updates (from
    updates.jsonl): black active, orange grown at that update, grey active after an earlier update
    but not now (explored), R_s in each title. Returns the path, or None when the run had no update."""
    updates = [u for u in read_jsonl(os.path.join(run_dir, "updates.jsonl")) if "crop_active" in u]
    if not updates:
        return None
    plt = _pyplot()
    chosen = [updates[i] for i in sorted({round(j) for j in np.linspace(0, len(updates) - 1, min(panels, len(updates)))})]
    fig, axes = plt.subplots(1, len(chosen), figsize=(2.6 * len(chosen), 3.2), squeeze=False)
    rows, cols = chosen[0]["crop_shape"]
    seen = {}          # iteration -> positions active after any update up to it (the explored part we logged)
    union = set()
    for update in updates:
        union |= set(update["crop_active"])
        seen[update["iteration"]] = sorted(union)
    for ax, update in zip(axes[0], chosen):
        picture = np.ones((rows * cols, 3))                               # white: never seen active
        picture[seen[update["iteration"]]] = (0.78, 0.78, 0.78)           # grey: explored, inactive now
        picture[update["crop_active"]] = (0.1, 0.1, 0.1)                  # black: active
        picture[update["crop_grown"]] = (1.0, 0.5, 0.0)                   # orange: grown at this update
        ax.imshow(picture.reshape(rows, cols, 3), interpolation="nearest")
        number = updates.index(update) + 1
        ax.set_title(f"update {number} of {len(updates)}\n(iteration {update['iteration']}), R_s {format_rs(update['rs'])}",
                     fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    words = _matrix_words(chosen[0])
    shown = ", ".join(str(updates.index(u) + 1) for u in chosen)
    fig.suptitle(f"{run_title(run_dir)}\n{chosen[0]['crop_layer']} (the first sparse layer, {words['layer']}), "
                 f"top-left {rows}x{cols} of its mask after updates "
                 f"{shown} of {len(updates)}: black active, orange grown at that update, grey active after an "
                 f"earlier update (explored)\nrows: {words['rows']} 0-{rows - 1}; columns: {words['columns']}, "
                 f"0-{cols - 1}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.80))
    path = path or os.path.join(run_dir, "mask_evolution.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _matrix_words(update):
    """The crop's layer and axes in words (report.matrix_words; logs from before it: a linear layer's)."""
    return update.get("crop_axes") or LINEAR_WORDS


def _mask_pictures(updates):
    """One RGB crop per update (rows, cols, 3): black active, orange grown at that update, grey
    active after an earlier logged update but not now (explored), white never seen active."""
    rows, cols = updates[0]["crop_shape"]
    union, pictures = set(), []
    for update in updates:
        union |= set(update["crop_active"])
        picture = np.ones((rows * cols, 3))
        picture[sorted(union)] = (0.78, 0.78, 0.78)
        picture[update["crop_active"]] = (0.1, 0.1, 0.1)
        picture[update["crop_grown"]] = (1.0, 0.5, 0.0)
        pictures.append(picture.reshape(rows, cols, 3))
    return pictures


def mask_animation(run_dir, path=None, max_frames=60, fps=4):
    """An animated GIF (drawn by matplotlib, written by Pillow) of the mask corner of mask_evolution, one frame per
    topology update (at most `max_frames`, evenly chosen), beside R_s and reliable R_s growing up to
    that update. Returns the path, or None when the run had no update."""
    from PIL import Image                     # Pillow: a dependency of matplotlib
    updates = [u for u in read_jsonl(os.path.join(run_dir, "updates.jsonl")) if "crop_active" in u]
    if not updates:
        return None
    plt = _pyplot()
    pictures = _mask_pictures(updates)
    frames = sorted({round(j) for j in np.linspace(0, len(updates) - 1, min(max_frames, len(updates)))})
    iterations = [u["iteration"] for u in updates]
    fig, (mask_ax, rs_ax) = plt.subplots(1, 2, figsize=(8, 3.8), dpi=80, gridspec_kw={"width_ratios": [1, 1.4]})
    image = mask_ax.imshow(pictures[0], interpolation="nearest")
    mask_ax.set_xticks([])
    mask_ax.set_yticks([])
    rows, cols = updates[0]["crop_shape"]
    words = _matrix_words(updates[0])
    mask_ax.set_xlabel("black active, orange just grown,\ngrey explored (active after an earlier update)", fontsize=8)
    curves = {}
    for key, label, color in (("rs", "R_s", "tab:blue"), ("rs_reliable", "reliable R_s", "tab:green")):
        values = [u[key] for u in updates]
        rs_ax.plot(iterations, values, color="0.85", lw=1)                       # the whole run, faint
        curves[key] = rs_ax.plot([], [], lw=2, label=label, color=color)[0]      # up to this frame
    rs_ax.set_xlabel("iteration")
    rs_ax.set_ylabel("fraction of all weights explored")
    rs_ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{run_title(run_dir)}\nleft: {updates[0]['crop_layer']} ({words['layer']}), top-left corner of its "
                 f"mask; rows: {words['rows']} 0-{rows - 1},\ncolumns: {words['columns']}, 0-{cols - 1}", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    images = []
    for i in frames:                          # one draw per frame (FuncAnimation's save draws each three times)
        image.set_data(pictures[i])
        for key, line in curves.items():
            line.set_data(iterations[:i + 1], [u[key] for u in updates[:i + 1]])
        mask_ax.set_title(f"update {i + 1} of {len(updates)} (iteration {iterations[i]})\n"
                          f"R_s {format_rs(updates[i]['rs'])}, reliable {format_rs(updates[i]['rs_reliable'])}",
                          fontsize=9)
        fig.canvas.draw()
        images.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert("RGB"))
    plt.close(fig)
    path = path or os.path.join(run_dir, "mask_evolution.gif")
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=1000 // fps, loop=0)
    return path


def sweep_figure(rows, spec, path, title):
    """Aggregated sweep results: one panel per metric; x numeric -> lines with std bars, else bars."""
    plt = _pyplot()
    x_key, metrics, series_key = spec["x"], spec.get("y", ["test_acc_at_best_val", "final_rs"]), spec.get("series")
    labels = {"test_acc_at_best_val": "test accuracy (best val epoch)", "final_rs": "R_s (explored fraction)",
              "final_rs_reliable": "reliable R_s", "generalization_gap": "train acc - test acc",
              "train_flops_rel": "training FLOPs / dense"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.0), squeeze=False)
    series = sorted({str(r.get(series_key, "")) for r in rows},
                    key=lambda v: (0, float(v), v) if _is_number(v) else (1, 0.0, v)) if series_key else [""]
    numeric = all(_is_number(r.get(x_key)) for r in rows)
    for ax, metric in zip(axes[0], metrics):
        for i, name in enumerate(series):
            chosen = [r for r in rows if not series_key or str(r.get(series_key, "")) == name]
            if numeric:
                chosen.sort(key=lambda r: float(r[x_key]))
                ax.errorbar([float(r[x_key]) for r in chosen], [r[metric] for r in chosen],
                            yerr=[r[metric + "_std"] or 0 for r in chosen], marker="o", capsize=3,
                            label=f"{series_key}={name}" if series_key else None)
            else:
                width = 0.8 / len(series)
                xs = [j + i * width for j in range(len(chosen))]
                bars = ax.bar(xs, [r[metric] for r in chosen], width, yerr=[r[metric + "_std"] or 0 for r in chosen],
                              capsize=3, label=f"{series_key}={name}" if series_key else None)
                ax.bar_label(bars, labels=[f"{r[metric]:.3f}" for r in chosen], fontsize=7, padding=2)
                ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(chosen))],
                              [str(r[x_key]) for r in chosen], rotation=30, ha="right")
        if numeric and spec.get("xscale"):
            ax.set_xscale(spec["xscale"])
            ticks = sorted({float(r[x_key]) for r in rows})
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
        # The axis holds every bar's top, its error bar and its label; close bars are zoomed in (else a
        # point's difference is invisible), never below a 2% window, which would magnify the noise.
        spans = [(r[metric] - (r[metric + "_std"] or 0), r[metric] + (r[metric + "_std"] or 0))
                 for r in rows if r[metric] is not None]
        low, high = min(a for a, _ in spans), max(b for _, b in spans)
        if not numeric and high > 0 and (high - low) < 0.25 * high:
            margin = max(high - low, 0.02 * high)
            ax.set_ylim(low - margin, high + 0.6 * margin)
        ax.set(xlabel=x_key, ylabel=labels.get(metric, metric))
        ax.grid(alpha=0.3)
        if series_key:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sweep_curves(runs, path, title):
    """Test accuracy and R_s per epoch, one line per group of runs ({name: [run folders]}, the seeds
    of one setting): their mean, and a band from the lowest to the highest seed; returns the path."""
    plt = _pyplot()
    fig, (acc_ax, rs_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, run_dirs in runs.items():
        logs = [read_jsonl(os.path.join(run_dir, "metrics.jsonl")) for run_dir in run_dirs]
        epochs = [r["epoch"] for r in min(logs, key=len)]                 # the epochs every seed has
        label = name if len(logs) == 1 else f"{name} (mean of {len(logs)} seeds, band: min-max)"
        for ax, key in ((acc_ax, "test_acc"), (rs_ax, "rs")):
            per_seed = [[rows[i][key] for i in range(len(epochs))] for rows in logs]
            mean = [sum(v) / len(v) for v in zip(*per_seed)]
            line, = ax.plot(epochs, mean, label=label)
            if len(logs) > 1:
                ax.fill_between(epochs, [min(v) for v in zip(*per_seed)], [max(v) for v in zip(*per_seed)],
                                color=line.get_color(), alpha=0.2)
    acc_ax.set(xlabel="epoch", ylabel="test accuracy", title="Test accuracy per epoch")
    rs_ax.set(xlabel="epoch", ylabel="R_s (explored fraction)", title="ITOP rate R_s per epoch")
    for ax in (acc_ax, rs_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _is_number(value):
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def accuracy_vs_rs(points, path, title):
    """Test accuracy against R_s, one marker per run: points = [(label, R_s, reliable R_s, accuracy,
    group)]; runs of one group (e.g. one sparsity) share a colour, and an arrow joins each run's
    reliable R_s to its R_s. Returns the path."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10.5, 5))
    groups = sorted({p[4] for p in points}, key=str)
    colours = dict(zip(groups, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    for label, rs, reliable, accuracy, group in points:
        ax.annotate("", (rs, accuracy), (reliable, accuracy), arrowprops=dict(arrowstyle="-", color="0.75"))
        ax.plot(reliable, accuracy, "o", mfc="none", color=colours[group])
        ax.plot(rs, accuracy, "o", color=colours[group])
        ax.annotate(label, (rs, accuracy), textcoords="offset points", xytext=(5, 4), fontsize=8)
    for group in groups:
        ax.plot([], [], "o", color=colours[group], label=f"{group}: R_s (filled), reliable R_s (open)")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter
    for axis in (ax.xaxis,):
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[-1] in "25" else ""))
    ax.set(xlabel="explored fraction of all weights (log scale)", ylabel="test accuracy (best-validation epoch)",
           title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
