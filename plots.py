"""Every figure of the study: training curves, misclassified digits, seeds, the micro-batch sweep, the range
test, activations, the group count and the weight magnitudes. Each returns its figure and saves it as PNG when
given a path."""
import itertools
import math
import statistics
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
import torch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator, ScalarFormatter

from budget import finals_by_budget
from probes import divergence_step, epochs_label, finals_by_group, shared_statistics, smoothed
from stats import by_name, common_seeds, paired_by_seed, summarize, sweep_points
from utils import MNIST_MEAN, MNIST_STD, conv_weights


DPI = 150  # sharp on GitHub and nbviewer, where figures are shown at about 900 px
PLAIN = FuncFormatter(lambda value, _: f"{value:g}")  # 0.02 on a log axis, not 2x10^-2
NOTE_BAND = 8 / 72 + 0.05  # inches at the bottom of a figure kept for its note (8-point text and a margin)
# minor ticks of a log axis labelled at 2, 3 and 5 times a power of ten only: all eight crowd where a decade is short
SPARSE = FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "235" else "")


def trained_on(histories):
    """Where the runs were trained, for figure notes: "trained on CPU (1 threads), torch 2.14.1+cu130"."""
    return "trained on " + " and ".join(sorted({h.get("trained_on", "an unrecorded device") for h in histories}))


def plot_per_seed(histories, path=None, note=None):
    """Final test accuracy of each configuration, a line per seed joining its runs: parallel lines mean the seed moves
    all configurations alike, which the paired test uses."""
    paired = paired_by_seed(histories)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for i, seed in enumerate(common_seeds(histories)):
        ax.plot(list(paired), [values[i] for values in paired.values()], marker="o", label=f"seed {seed}")
    ax.set(xlabel="configuration", ylabel="final test accuracy (%)", title="Each seed's runs, paired")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)  # beside: no seed hidden
    return _finish(fig, path, note)


def plot_micro_batch_sweep(histories, path=None, note=None):
    """Final test accuracy against the micro-batch size, as the sweep's table gives it: mean over seeds, bars ±1 sd,
    for each normalization trained at several sizes; one trained at a single size (LN and GN, whose statistics are
    per sample) is a flat reference line with a ±1 sd band across the whole axis.

    A diverged run is drawn as an x at the bottom edge, labelled; a size whose mean is below 50% (runs that trained but
    fail at test) as a triangle there with its mean written beside it: neither sets the scale of the plot.
    """
    points, failed = sweep_points(histories)
    fig, ax = plt.subplots(figsize=(7, 5))
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
            ax.annotate(f"{name} (band ±1 sd)", (0.01, mean), xycoords=ax.get_yaxis_transform(), xytext=(0, 3),
                        textcoords="offset points", color=f"C{i}", fontsize=9, va="bottom")
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
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)  # clear of the data
    return _finish(fig, path, note)

def plot_lr_range(curves, path=None, note=None):
    """Smoothed training loss against the learning rate (log-log), one panel per network, a line per seed; where a
    seed's loss leaves for good (probes.divergence_step) an x on its curve, or a triangle at the top edge when the
    curve is above the plot there or no longer a number. The y-range spans the curves up to just above their start."""
    networks = by_name(curves)
    columns = math.ceil(len(networks) / 2)
    fig, axes = plt.subplots(2, columns, figsize=(max(8, 3.2 * columns), 6), sharex=True, sharey=True, squeeze=False)
    starts = [smoothed(c["loss"])[0] for c in curves]
    lowest = min(min(v for v in smoothed(c["loss"]) if math.isfinite(v)) for c in curves)
    bottom, top = 0.8 * lowest, 1.6 * max(starts)
    for ax, (name, runs) in zip(axes.flat, networks.items()):
        for j, c in enumerate(runs):
            loss, colour = smoothed(c["loss"]), f"C{j}"
            ax.plot(c["lr"], [min(v, 10 * top) for v in loss], color=colour, linewidth=1, label=f"seed {c['seed']}")
            step = divergence_step(c["loss"])
            if step is None:
                continue
            if math.isfinite(loss[step]) and loss[step] < top:
                ax.plot(c["lr"][step], loss[step], "x", color=colour, markersize=9, markeredgewidth=2)
            else:
                ax.plot(c["lr"][step], 0.97, "^", color=colour, markersize=8, transform=ax.get_xaxis_transform())
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower left")
    for ax in axes.flat[len(networks):]:
        ax.axis("off")
        axes[0, list(axes[1]).index(ax)].xaxis.set_tick_params(labelbottom=True)  # the panel above shows the scale
    ax = axes[0, 0]
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom, top)
    ax.yaxis.set_major_formatter(PLAIN)
    ax.yaxis.set_minor_formatter(SPARSE)
    fig.supxlabel("learning rate (raised exponentially over one epoch)", fontsize=10, y=NOTE_BAND / fig.get_figheight(),
                  va="bottom")  # above the note's band
    fig.supylabel("training loss (smoothed, nats)", fontsize=10)
    fig.suptitle("Learning-rate range test (x: the loss leaves for good; ^: it does so above the plot)", fontsize=11)
    return _finish(fig, path, note)


def plot_activation_statistics(activations, path=None, note=None):
    """Each channel's (mean, sd) before (top row) and after (bottom row) the normalization, one column per network,
    one colour per layer, for the trained weights (the table beside it also has them at initialization)."""
    trained = [run for run in activations if run["weights"] == "trained"]
    names = list(dict.fromkeys(run["name"] for run in trained))
    fig, axes = plt.subplots(2, len(names), figsize=(2.9 * len(names) + 1.3, 6.4), sharex="row", sharey="row",
                             squeeze=False)
    layers = max(len(run["layers"]) for run in trained)
    for run in trained:
        column = names.index(run["name"])
        for row, side in enumerate(("before", "after")):
            for i, layer in enumerate(run["layers"]):
                axes[row, column].scatter(layer[f"{side}_mean"], layer[f"{side}_sd"], s=18, alpha=0.8, color=f"C{i}")
    for column, name in enumerate(names):
        axes[0, column].set_title(f"{name}: before", fontsize=10)
        axes[1, column].set_title(f"{name}: after (before scale, shift)", fontsize=10)
        for ax in axes[:, column]:
            ax.set_xlabel("channel mean over (N, H, W)", fontsize=9)
            ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("channel sd over (N, H, W)", fontsize=9)
    handles = [Line2D([], [], color=f"C{i}", marker="o", linestyle="", label=f"layer {i + 1}") for i in range(layers)]
    fig.tight_layout(rect=(0, 0.02, 1 - 1.2 / fig.get_figwidth(), 1))
    fig.legend(handles=handles, loc="center right", fontsize=9, frameon=False, title="trained", title_fontsize=9)
    return _finish(fig, path, note, layout=False)


def plot_group_sweep(histories, study_groups, path=None, note=None):
    """Final test accuracy against the GroupNorm group count: the mean over seeds, a thin line in its own colour per
    seed (its runs paired across group counts), the study's group count marked; the legend beside the plot."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    by_groups = finals_by_group(histories)
    counts, seeds = sorted(by_groups), sorted({h["seed"] for h in histories})
    for j, seed in enumerate(seeds):
        xs = [g for g in counts if seed in by_groups[g]]
        ax.plot(xs, [by_groups[g][seed] for g in xs], color=plt.cm.tab10(j % 10), linewidth=0.9, alpha=0.8,
                marker=".", label=f"seed {seed}")
    means = [statistics.fmean(by_groups[g].values()) for g in counts]
    ax.plot(counts, means, color="black", marker="o", linewidth=2.2, label="mean over seeds")
    ax.axvline(study_groups, color="0.5", linestyle="--", linewidth=1, label=f"the study's GN ({study_groups} groups)")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xticks(counts)
    ax.set(xlabel="GroupNorm groups (1 = LayerNorm; 8 = one channel per group in 8-channel layers)",
           ylabel="final test accuracy (%)", title=f"GroupNorm group count ({epochs_label(histories[0])})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _finish(fig, path, note)


def plot_budget(histories, path=None, note=None, thresholds=(99.0, 99.4)):
    """Final test accuracy against the training budget (each budget its own one-cycle schedule): a dot per seed (below
    90%, a triangle at the bottom edge with its value), the networks side by side at each budget, and a line through
    each network's means; the thresholds dotted."""
    finals = finals_by_budget(histories)
    fig, ax = plt.subplots(figsize=(8, 4.6))
    offsets = [0.93, 0.98, 1.02, 1.07][:len(finals)] if len(finals) <= 4 else [1.0] * len(finals)
    lowest = min(v for by_budget in finals.values() for seeds in by_budget.values() for v in seeds.values())
    bottom = max(lowest - 0.2, 90)  # a seed below 90% is drawn at the bottom edge with its value beside it
    for i, (name, by_budget) in enumerate(finals.items()):
        budgets = sorted(by_budget)
        for epochs in budgets:
            values = list(by_budget[epochs].values())
            shown = [v for v in values if v >= bottom]
            ax.plot([epochs * offsets[i]] * len(shown), shown, ".", color=f"C{i}", alpha=0.6, markersize=6)
            for k, v in enumerate(sorted(v for v in values if v < bottom)):
                ax.plot(epochs * offsets[i], 0.02, "v", color=f"C{i}", markersize=7, transform=ax.get_xaxis_transform())
                ax.annotate(f"{v:.1f}%", (epochs * offsets[i], 0.02), xycoords=ax.get_xaxis_transform(), fontsize=9,
                            xytext=(6, 12 * k), textcoords="offset points", color=f"C{i}", va="bottom")
        ax.plot([e * offsets[i] for e in budgets], [statistics.fmean(by_budget[e].values()) for e in budgets],
                color=f"C{i}", marker="o", linewidth=2, label=name)
    for threshold in thresholds:
        ax.axhline(threshold, color="0.5", linestyle=":", linewidth=1)
    every = sorted({e for by_budget in finals.values() for e in by_budget})
    ax.set_xscale("log")
    ax.set_xticks(every)
    ax.xaxis.set_major_formatter(PLAIN)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_ylim(bottom, 100)
    ax.set(xlabel="training budget (epochs, each its own one-cycle schedule)", ylabel="final test accuracy (%)",
           title="What each budget reaches: a dot per seed, a line through the means")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="lower right")
    return _finish(fig, path, note)


def plot_normalization_axes(micro_batch=3, groups=4, path=None):
    """What BN, ghost BN, LN and GN average over in an (N, C, H x W) activation: one cube per layer, the elements that
    share the marked element's statistics in colour (probes.shared_statistics: asked of the layers themselves)."""
    layers = {"BatchNorm\n(the batch)": ("bn", {}),
              f"ghost BatchNorm\n(micro-batch {micro_batch})": ("bn", {"micro_batch": micro_batch}),
              "LayerNorm\n(GroupNorm, 1 group)": ("ln", {}), f"GroupNorm\n({groups} groups)": ("gn", {"groups": groups})}
    fig = plt.figure(figsize=(10, 3.1))
    for i, (title, (norm, options)) in enumerate(layers.items(), 1):
        shared = shared_statistics(norm, **options).numpy()
        ax = fig.add_subplot(1, len(layers), i, projection="3d")
        ax.voxels(shared, facecolors="#1f77b4", edgecolor="white", linewidth=0.4)
        n, c, p = shared.shape
        for start, end in itertools.combinations(itertools.product((0, n), (0, c), (0, p)), 2):
            if sum(u != v for u, v in zip(start, end)) == 1:  # the 12 edges of the whole activation's box
                ax.plot(*zip(start, end), color="0.4", linewidth=0.8)
        ax.set_box_aspect(shared.shape)
        ax.view_init(elev=22, azim=-58)
        ax.set_axis_off()
        ax.set_facecolor("none")  # the next panel must not hide this one's labels
        ax.text(n / 2, -1.2, 0, "N (samples)", fontsize=9, ha="center", va="top")
        ax.text(n + 0.5, c / 2, -0.5, "C (channels)", fontsize=9, ha="left", va="top")
        ax.text(0, 0, p + 0.4, "H × W (pixels)", fontsize=9, ha="center", va="bottom")  # above: inside any crop
        ax.set_title(title, fontsize=10)
    fig.suptitle("Blue: the elements that one mean and variance are taken over, in an (N, C, H × W) activation "
                 "(found by asking the study's own layers)", fontsize=10)
    fig.subplots_adjust(left=0.03, right=0.93, bottom=-0.05, top=0.9, wspace=0.15)
    return _finish(fig, path, layout=False)


def plot_weight_histograms(models, path=None, note=None, relative=0.01):
    """Distribution of each conv weight's |w| relative to the largest |w| of its layer, pooled over the seeds and the
    conv layers, log-spaced bins, one outline per configuration; the near-zero threshold (`relative`, as in
    probes.near_zero_fraction) marked, with the share below it in the legend."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    bins = torch.logspace(-6, 0, 61).numpy()
    for i, (name, runs) in enumerate(models.items()):
        weights = torch.cat([(w.detach().abs() / w.detach().abs().max()).flatten().cpu()
                             for m in runs for w in conv_weights(m)])
        below = 100 * (weights < relative).float().mean().item()
        ax.hist(weights.clamp(min=bins[0]).numpy(), bins=bins, histtype="step", linewidth=2.8 if i == 0 else 1.6,
                linestyle=("-", "--", ":")[i % 3],  # outlines that coincide (BN and BN + L2) both stay visible
                weights=torch.full_like(weights, 100 / len(weights)).numpy(), label=f"{name}: {below:.1f}% near zero")
    ax.axvline(relative, color="0.3", linestyle="--", linewidth=1)
    ax.annotate(f"near zero: below {relative:g}\nof the layer's largest", (relative, 0.97), ha="right", va="top",
                xycoords=ax.get_xaxis_transform(), xytext=(-4, 0), textcoords="offset points", fontsize=8)
    ax.set_xscale("log")
    ax.set(xlabel="|w| / largest |w| of its layer (conv weights; below 1e-6 in the first bin)",
           ylabel="% of conv weights", title="Weight magnitudes, pooled over seeds and conv layers")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="upper left")
    return _finish(fig, path, note)


def _finish(fig, path, note=None, layout=True):
    """Lay out (unless the figure did), put `note` (where the runs were trained) in the bottom-right corner, save as
    PNG when `path`."""
    if layout:  # with a note, a band at the bottom kept free for it, clear of the axis labels
        fig.tight_layout(rect=(0, NOTE_BAND / fig.get_figheight() if note else 0, 1, 1))
    if note:
        fig.text(0.995, 0.005, note, ha="right", va="bottom", fontsize=8, color="0.4")
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
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    plot_metric(histories, "train_loss", "cross-entropy (nats, log scale)", "Training loss (running mean per epoch)",
                ax=left, log=True)
    errors = [{**h, "train_error": [100 - a for a in h["train_acc"]]} for h in histories]
    plot_metric(errors, "train_error", "error (%, log scale)", "Training error (running, augmented batches)", ax=right,
                log=True)
    return _finish(fig, path, note)


def plot_misclassified(images, mistakes, title, path=None, note=None, fig=None):
    """A 5x2 grid (5 rows, 2 columns) of misclassified digits, each titled with predicted, actual, probability; into
    `fig` (a subfigure) when given. The note sits in a footer of its own, below the last row."""
    alone = fig is None
    fig = fig or plt.figure(figsize=(3.4, 7.4), layout="constrained")
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
    if not alone:
        return fig
    if note:
        fig.supxlabel(note, x=0.995, ha="right", fontsize=8, color="0.4")
    return _finish(fig, path, layout=False)


def plot_misclassified_grids(images, grids, path=None, note=None):
    """The 5x2 grids {title: (mistakes, path)} side by side in one figure (saved as `path`), each also saved alone as
    its PNG `path`; the note in a footer of its own, below the digits."""
    for title, (mistakes, grid_path) in grids.items():
        plt.close(plot_misclassified(images, mistakes, title, grid_path, note))
    fig = plt.figure(figsize=(3.4 * len(grids), 7.6), layout="constrained")
    for subfigure, (title, (mistakes, _)) in zip(fig.subfigures(1, len(grids)), grids.items()):
        plot_misclassified(images, mistakes, title, fig=subfigure)
    if note:
        fig.supxlabel(note, x=0.995, ha="right", fontsize=8, color="0.4")
    return _finish(fig, path, layout=False)
