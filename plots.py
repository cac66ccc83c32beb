"""Every figure of the study: training curves, misclassified digits, seeds, the micro-batch sweep, the range
test, activations, the group count and the weight magnitudes. Each returns its figure and saves it as PNG when
given a path."""
import math
import statistics
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import SubFigure
from matplotlib.lines import Line2D
import torch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator, ScalarFormatter

from probes import divergence_step, epochs_label, finals_by_group, smoothed
from stats import by_name, common_seeds, paired_by_seed, summarize, sweep_points
from utils import MNIST_MEAN, MNIST_STD, conv_weights


DPI = 150  # sharp on GitHub and nbviewer, where figures are shown at about 900 px
PLAIN = FuncFormatter(lambda value, _: f"{value:g}")  # 0.02 on a log axis, not 2x10^-2


def trained_on(histories):
    """Where the runs were trained, for figure notes: "trained on CPU (1 threads), torch 2.14.1+cu130"."""
    return "trained on " + " and ".join(sorted({h.get("trained_on", "an unrecorded device") for h in histories}))


def plot_per_seed(histories, path=None, note=None):
    """Final test accuracy of each configuration, a line per seed joining its runs: parallel lines mean the seed moves
    all configurations alike, which the paired test uses."""
    paired = paired_by_seed(histories)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, seed in enumerate(common_seeds(histories)):
        ax.plot(list(paired), [values[i] for values in paired.values()], marker="o", label=f"seed {seed}")
    ax.set(xlabel="configuration", ylabel="final test accuracy (%)", title="Each seed's runs, paired")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, path, note)


def plot_micro_batch_sweep(histories, path=None, note=None):
    """Final test accuracy against the micro-batch size, as the sweep's table gives it: mean over seeds, bars ±1 sd,
    for each normalization trained at several sizes; one trained at a single size (LN and GN, whose statistics are
    per sample) is a flat reference line with a ±1 sd band across the whole axis.

    A diverged run is drawn as an x at the bottom edge, labelled; a size whose mean is below 50% (runs that trained but
    fail at test) as a triangle there with its mean written beside it: neither sets the scale of the plot.
    """
    points, failed = sweep_points(histories)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    all_sizes = sorted({s for by_size in points.values() for s in by_size})
    for i, (name, by_size) in enumerate(points.items()):
        means = {s: statistics.fmean(values) for s, values in by_size.items() if values}
        low = sorted(s for s, mean in means.items() if mean < 50)
        for size in low:
            ax.annotate(f"{means[size]:.1f}%", (size, 0.03), xycoords=ax.get_xaxis_transform(),
                        xytext=(7, -3), textcoords="offset points", color=f"C{i}", fontsize=8)
        if low:
            ax.plot(low, [0.03] * len(low), "v", color=f"C{i}", markersize=8, transform=ax.get_xaxis_transform(),
                    label=f"{name}: mean below 50% at test (written beside)")
        sizes = [s for s in sorted(by_size) if by_size[s] and s not in low]
        accs = [summarize(by_size[s]) for s in sizes]
        spread = [0 if a["n"] == 1 else a["std"] for a in accs]
        if len(by_size) == 1 and sizes:  # one size only: a reference, the same at any micro-batch
            mean = accs[0]["mean"]
            ax.axhline(mean, color=f"C{i}", linestyle="--",
                       label=f"{name} at {sizes[0]} (per-sample statistics; band: ±1 sd)")
            ax.axhspan(mean - spread[0], mean + spread[0], color=f"C{i}", alpha=0.07, linewidth=0)
        elif sizes:
            ax.errorbar(sizes, [a["mean"] for a in accs], yerr=spread, color=f"C{i}", capsize=3, marker="o",
                        markersize=4, label=name)
        lost = [s for s in sorted(by_size) if failed.get((name, s))]
        if lost:
            ax.plot(lost, [0.03] * len(lost), "x", color=f"C{i}", markersize=9, transform=ax.get_xaxis_transform(),
                    label=f"{name}: diverged")
    ax.set_xscale("log", base=2)
    ax.set_xticks(all_sizes, [str(s) for s in all_sizes])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set(xlabel="micro-batch: samples per BatchNorm statistic (optimizer batch fixed)",
           ylabel="final test accuracy (%)", title="Micro-batch sensitivity (same steps, same samples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, path, note)

def plot_lr_range(curves, path=None, note=None):
    """Smoothed training loss against the learning rate (log-log), a line per run, one colour per network; an x where
    a run diverged."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (name, runs) in enumerate(by_name(curves).items()):
        for j, c in enumerate(runs):
            loss = smoothed(c["loss"])
            ax.plot(c["lr"], loss, color=f"C{i}", linewidth=1, alpha=0.8, label=name if j == 0 else None)
            step = divergence_step(c["loss"])
            if step is not None and math.isfinite(loss[step]):
                ax.plot(c["lr"][step], min(loss[step], 10), "x", color=f"C{i}", markersize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(top=10)
    ax.set(xlabel="learning rate (raised exponentially over one epoch)", ylabel="training loss (smoothed, nats)",
           title="Learning-rate range test (x: diverged)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _finish(fig, path, note)


def plot_activation_statistics(activations, path=None, note=None):
    """Each channel's (mean, sd) before (top row) and after (bottom row) the normalization, one column per network,
    one colour per layer; filled circles: trained weights, crosses: at initialization."""
    names = list(dict.fromkeys(run["name"] for run in activations))
    fig, axes = plt.subplots(2, len(names), figsize=(3.6 * len(names) + 1.4, 7), sharex="row", sharey="row",
                             squeeze=False)
    layers = max(len(run["layers"]) for run in activations)
    for run in activations:
        column, trained = names.index(run["name"]), run["weights"] == "trained"
        for row, side in enumerate(("before", "after")):
            for i, layer in enumerate(run["layers"]):
                axes[row, column].scatter(layer[f"{side}_mean"], layer[f"{side}_sd"], s=16 if trained else 24,
                                          alpha=0.8, color=f"C{i}", marker="o" if trained else "+", linewidths=1.2)
    for column, name in enumerate(names):
        axes[0, column].set_title(f"{name}: before normalization", fontsize=10)
        axes[1, column].set_title(f"{name}: after (before scale and shift)", fontsize=10)
        for ax in axes[:, column]:
            ax.set(xlabel="channel mean over (N, H, W)")
            ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("channel sd over (N, H, W)")
    handles = [Line2D([], [], color=f"C{i}", marker="o", linestyle="", label=f"layer {i + 1}") for i in range(layers)]
    handles += [Line2D([], [], color="0.3", marker="o", linestyle="", label="trained"),
                Line2D([], [], color="0.3", marker="+", markersize=9, linestyle="", label="at initialization")]
    fig.tight_layout(rect=(0, 0, 1 - 1.3 / fig.get_figwidth(), 1))
    fig.legend(handles=handles, loc="center right", fontsize=9, frameon=False)
    return _finish(fig, path, note, layout=False)


def plot_group_sweep(histories, study_groups, path=None, note=None):
    """Final test accuracy against the GroupNorm group count: the mean over seeds, a thin line per seed (paired
    across group counts), the study's group count marked."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    by_groups = finals_by_group(histories)
    counts, seeds = sorted(by_groups), sorted({h["seed"] for h in histories})
    for seed in seeds:
        xs = [g for g in counts if seed in by_groups[g]]
        ax.plot(xs, [by_groups[g][seed] for g in xs], color="C2", linewidth=0.8, alpha=0.45, marker=".",
                label="each seed" if seed == seeds[0] else None)
    means = [statistics.fmean(by_groups[g].values()) for g in counts]
    ax.plot(counts, means, color="C2", marker="o", linewidth=2, label="mean over seeds")
    ax.axvline(study_groups, color="0.5", linestyle="--", linewidth=1, label=f"the study's GN ({study_groups} groups)")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xticks(counts)
    ax.set(xlabel="GroupNorm groups (1 = LayerNorm; 8 = one channel per group in 8-channel layers)",
           ylabel="final test accuracy (%)", title=f"GroupNorm group count ({epochs_label(histories[0])})")
    ax.grid(alpha=0.3)
    ax.legend()
    return _finish(fig, path, note)


def plot_weight_histograms(models, path=None, note=None):
    """Distribution of |w| over all conv weights (pooled over seeds), log-spaced bins, one outline per configuration."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    bins = torch.logspace(-6, 0.5, 60).numpy()
    for name, runs in models.items():
        weights = torch.cat([w.detach().abs().flatten().cpu() for m in runs for w in conv_weights(m)])
        ax.hist(weights.clamp(min=bins[0]).numpy(), bins=bins, histtype="step", linewidth=1.6,
                weights=torch.full_like(weights, 100 / len(weights)).numpy(), label=name)
    ax.set_xscale("log")
    ax.set(xlabel="|w| of conv weights (values below 1e-6 in the first bin)", ylabel="% of conv weights",
           title="Weight magnitudes")
    ax.grid(alpha=0.3)
    ax.legend()
    return _finish(fig, path, note)


def _finish(fig, path, note=None, layout=True):
    """Lay out (unless the figure did), put `note` (where the runs were trained) in the bottom-right corner, save as
    PNG when `path`."""
    if layout:
        fig.tight_layout()
    if note:
        fig.text(0.995, 0.005, note, ha="right", va="bottom", fontsize=7, color="0.4")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    return fig


def plot_metric(histories, key, ylabel, title, path=None, ylim=None, ax=None, note=None, log=False, last=None):
    """`key` ("test_loss", "test_acc", ...) against the epoch: one line per configuration name, the mean over its
    seeds, over a thin line for each seed (a spread that, unlike a ±sd band, stays within the quantity's range).

    `log`: a log axis, where small relative differences late in training stay visible. `last`: an inset with the
    last that many epochs, zoomed to the spread of the seeds there, where the comparison is.
    """
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4.2))
    inset = ax.inset_axes([0.42, 0.07, 0.55, 0.5]) if last else None
    several = False
    for name, runs in by_name(histories).items():
        epochs = runs[0]["epoch"]
        mean = [statistics.fmean(h[key][i] for h in runs) for i in range(len(epochs))]
        for target in filter(None, (ax, inset)):
            line, = target.plot(epochs, mean, marker="o", markersize=3, label=name, zorder=3)
            for h in (runs if len(runs) > 1 else []):
                target.plot(h["epoch"], h[key], color=line.get_color(), linewidth=0.7, alpha=0.45, zorder=2)
        several |= len(runs) > 1
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ylim:
        ax.set_ylim(*ylim)
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_minor_locator(LogLocator(subs=(2, 5)))
        ax.yaxis.set_major_formatter(PLAIN)
        ax.yaxis.set_minor_formatter(PLAIN)
    if inset:
        end = histories[0]["epoch"][-1]
        shown = [v for h in histories for e, v in zip(h["epoch"], h[key]) if e > end - last]
        margin = 0.1 * (max(shown) - min(shown)) or 0.01
        inset.set(xlim=(end - last + 0.5, end + 0.5), ylim=(min(shown) - margin, max(shown) + margin),
                  title=f"last {last} epochs", facecolor="white")
        inset.title.set_fontsize(8)
        inset.tick_params(labelsize=7)
        inset.xaxis.set_major_locator(MaxNLocator(integer=True))
        inset.grid(alpha=0.3)
        ax.indicate_inset_zoom(inset, edgecolor="0.5")
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if several:
        handles.append(Line2D([], [], color="0.4", linewidth=0.7, alpha=0.6, label="thin: each seed; bold: their mean"))
    ax.legend(handles=handles, fontsize=8, loc="upper left" if last else "best")
    return _finish(fig, path, note)


def plot_train_curves(histories, path=None, note=None):
    """Training loss and training error (running, augmented) of every configuration, side by side, both on log axes:
    after the first epochs the curves differ by a fraction of their value, which a linear axis flattens into one."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    plot_metric(histories, "train_loss", "cross-entropy (nats, log scale)", "Training loss (running mean per epoch)",
                ax=left, log=True)
    errors = [{**h, "train_error": [100 - a for a in h["train_acc"]]} for h in histories]
    plot_metric(errors, "train_error", "error (%, log scale)", "Training error (running, augmented batches)", ax=right,
                log=True)
    return _finish(fig, path, note)


def plot_misclassified(images, mistakes, title, path=None, note=None, fig=None):
    """A 5x2 grid (5 rows, 2 columns) of misclassified digits, each titled with predicted, actual, probability; into
    `fig` (a subfigure) when given."""
    fig = fig or plt.figure(figsize=(3.4, 7.2))
    axes = fig.subplots(5, 2)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(mistakes["index"]):
            continue
        pixels = (images[mistakes["index"][i], 0] * MNIST_STD + MNIST_MEAN).clamp(0, 1).cpu().numpy()
        ax.imshow(pixels, cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"predicted {mistakes['predicted'][i]} (p={mistakes['probability'][i]:.2f})\n"
                     f"actual {mistakes['actual'][i]}  #{mistakes['index'][i]}", fontsize=9)
    fig.suptitle(title, fontsize=11)
    return fig if isinstance(fig, SubFigure) else _finish(fig, path, note)


def plot_misclassified_grids(images, grids, note=None):
    """The 5x2 grids {title: (mistakes, path)} side by side in one figure, each also saved alone as its PNG `path`."""
    for title, (mistakes, path) in grids.items():
        plt.close(plot_misclassified(images, mistakes, title, path, note))
    fig = plt.figure(figsize=(3.4 * len(grids), 7.2), layout="constrained")
    for subfigure, (title, (mistakes, _)) in zip(fig.subfigures(1, len(grids)), grids.items()):
        plot_misclassified(images, mistakes, title, fig=subfigure)
    if note:
        fig.text(0.995, 0.002, note, ha="right", va="bottom", fontsize=7, color="0.4")
    return fig
