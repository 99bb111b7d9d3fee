"""Figures of a run (matplotlib is imported here only, so `import tinyitop` stays light).

- training(): learning curves, R_s over training (per update and per epoch), prune rate.
- exploration(): ITOP's Figure-1 idea for an MLP's input layer: per input pixel, how many
  connections it has now and has ever had (explored set), plus per-layer active vs explored bars.
"""
import os

import numpy as np

from tinyitop import backend as B
from tinyitop.metrics import read_jsonl


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")          # files only; no display needed
    import matplotlib.pyplot as plt
    return plt


def training(run_dir, path=None):
    """Three panels from metrics.jsonl / updates.jsonl of `run_dir`; returns the PNG path."""
    plt = _pyplot()
    rows = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    updates = read_jsonl(os.path.join(run_dir, "updates.jsonl"))
    epochs = [r["epoch"] for r in rows]
    fig, (acc_ax, rs_ax, p_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    acc_ax.plot(epochs, [r["train_acc"] for r in rows], label="train")
    if any(r["val_acc"] is not None for r in rows):      # none with --val-fraction 0
        acc_ax.plot(epochs, [r["val_acc"] for r in rows], label="validation")
    acc_ax.plot(epochs, [r["test_acc"] for r in rows], label="test")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Learning curves")
    acc_ax.legend()
    acc_ax.grid(alpha=0.3)
    iterations_per_epoch = rows[0]["iteration"] / rows[0]["epoch"] if rows else 1
    if updates:
        it = np.array([u["iteration"] for u in updates]) / iterations_per_epoch
        rs_ax.plot(it, [u["rs"] for u in updates], ".-", ms=3, label="R_s at each update")
        rs_ax.plot(it, [u["rs_reliable"] for u in updates], ".-", ms=3, label="reliable R_s")
        p_ax.plot(it, [u["prune_rate"] for u in updates], ".-", ms=3)
    rs_ax.plot(epochs, [r["rs"] for r in rows], "k--", lw=1, label="R_s at epoch end")
    rs_ax.set(xlabel="epoch", ylabel="explored fraction of all weights", title="ITOP rate R_s")
    rs_ax.legend()
    rs_ax.grid(alpha=0.3)
    p_ax.set(xlabel="epoch", ylabel="fraction of nnz pruned and regrown", title="Prune rate at each update")
    p_ax.grid(alpha=0.3)
    fig.tight_layout()
    path = path or os.path.join(run_dir, "training.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def exploration(model, exploration_state, image_shape, path, layer_name="fc1"):
    """Figure-1-style picture: per input pixel, connections active now vs ever explored.

    image_shape (C, H, W) of the input; the input layer's columns are pixels in C-H-W order.
    """
    plt = _pyplot()
    from tinyitop.topology import sparse_layers
    layers = sparse_layers(model)
    if layer_name not in layers:
        raise ValueError(f"{layer_name} is not a sparse layer of this model")
    weight = layers[layer_name].weight_param
    n_cols = weight.shape[1]
    if n_cols != int(np.prod(image_shape)):
        raise ValueError(f"{layer_name} has {n_cols} inputs, not an image of shape {image_shape}")
    active_cols = B.to_host(weight.csr.indices)
    explored_cols = B.to_host(exploration_state.sets[layer_name].positions) % n_cols
    c, h, w = image_shape
    now = np.bincount(active_cols, minlength=n_cols).reshape(c, h, w).sum(axis=0)      # (H, W)
    ever = np.bincount(explored_cols, minlength=n_cols).reshape(c, h, w).sum(axis=0)   # (H, W)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, counts, title in ((axes[0], now, "connections now"), (axes[1], ever, "connections ever explored")):
        image = ax.imshow(counts, cmap="viridis")
        ax.set_title(f"{layer_name}: {title} per pixel")
        ax.axis("off")
        fig.colorbar(image, ax=ax, fraction=0.046)
    names = list(layers)
    active = [layers[n].weight_param.density for n in names]
    explored = [exploration_state.sets[n].count() / exploration_state.sets[n].numel for n in names]
    x = np.arange(len(names))
    axes[2].bar(x - 0.2, active, 0.4, label="active (density)")
    axes[2].bar(x + 0.2, explored, 0.4, label="explored (R_s of the layer)")
    axes[2].set_xticks(x, names, rotation=45 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    axes[2].set(ylabel="fraction of the layer's weights", title="Per layer: active vs explored", ylim=(0, 1.05))
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
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
                            yerr=[r[metric + "_std"] for r in chosen], marker="o", capsize=3,
                            label=f"{series_key}={name}" if series_key else None)
            else:
                width = 0.8 / len(series)
                xs = [j + i * width for j in range(len(chosen))]
                bars = ax.bar(xs, [r[metric] for r in chosen], width, yerr=[r[metric + "_std"] for r in chosen],
                              capsize=3, label=f"{series_key}={name}" if series_key else None)
                ax.bar_label(bars, labels=[f"{r[metric]:.3f}" for r in chosen], fontsize=7, padding=2)
                ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(chosen))],
                              [str(r[x_key]) for r in chosen], rotation=30, ha="right")
        if numeric and spec.get("xscale"):
            ax.set_xscale(spec["xscale"])
            ticks = sorted({float(r[x_key]) for r in rows})
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
        values = [r[metric] for r in rows if r[metric] is not None]
        low, high = min(values), max(values)
        if not numeric and high > 0 and (high - low) < 0.25 * high:   # close bars: zoom in, or 1 point is invisible
            margin = max(high - low, 1e-3)
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


def _is_number(value):
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False
