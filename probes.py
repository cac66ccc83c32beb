"""The looks under the hood, measured and analysed: the layer table, the range tests' curves (smoothing and the
divergence point), activation statistics by forward hooks, the GroupNorm group-count sweep and what the regularizers
did to the weights. Nothing here trains or stores a run: the run store (store.py) does that."""
import copy
import math
import statistics

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import norm_layer
from stats import by_name, compare_family, family_table, mean_sd
from utils import conv_weights


NORM_LAYERS = (nn.BatchNorm2d, nn.GroupNorm)


def _layer_name(module):
    if isinstance(module, nn.BatchNorm2d):
        return f"{type(module).__name__}({module.num_features})"
    if isinstance(module, nn.GroupNorm):
        return f"GroupNorm({module.num_groups}, {module.num_channels})"
    return type(module).__name__


def layer_table(models):
    """Markdown: the layers in which the nets {name: model} differ, with each one's layer, learned parameters and
    stored statistics (buffers), then the totals: what the other nets' torchsummary tables would add to the first's."""
    layers = {name: [m for m in model.modules() if not list(m.children())] for name, model in models.items()}

    def cell(module):
        buffers = sum(b.numel() for b in module.buffers(recurse=False))
        return (f"{_layer_name(module)}: {sum(p.numel() for p in module.parameters(recurse=False))} parameters"
                + (f", {buffers} stored statistics" if buffers else ""))

    rows = ["| layer (as torchsummary numbers it) | " + " | ".join(models) + " |", "|" + " --- |" * (len(models) + 1)]
    first = next(iter(layers.values()))
    for i in range(len(first)):
        cells = [cell(modules[i]) for modules in layers.values()]
        if len(set(cells)) > 1:
            rows.append(f"| {type(first[i]).__name__}-{i + 1} | " + " | ".join(cells) + " |")
    rows.append("| all layers | " + " | ".join(
        f"{sum(p.numel() for p in m.parameters()):,} parameters" for m in models.values()) + " |")
    return "\n".join(rows)


def smoothed(values, beta=0.9):
    """Bias-corrected exponential moving average of `values` (about the last 1 / (1 - beta) values weigh)."""
    average, out = 0.0, []
    for i, value in enumerate(values, 1):
        average = beta * average + (1 - beta) * value
        out.append(average / (1 - beta ** i))
    return out


LONG_SMOOTHING = 0.98  # a second, longer smoothing (about 50 steps): how much the divergence point depends on it


def divergence_step(losses, beta=0.9, min_improvement=0.1):
    """The step after which the smoothed loss never again comes below the midpoint between its start and its lowest
    value (or is no longer a number): where it leaves for good; None when it ends below that midpoint, or never
    improved by `min_improvement` of its start (nothing to lose).

    A spike that recovers is no divergence, however high it goes; the midpoint is relative, because a net can blow up
    from a loss of 0.3 as well as from 1.2, while its loss cannot climb far above chance (ln 10) once it predicts
    uniformly.
    """
    values = smoothed(losses, beta)
    bad = next((step for step, v in enumerate(values) if not math.isfinite(v)), None)  # stays so: it is an average
    finite = values[:bad]
    if not finite:
        return 0
    if values[0] - min(finite) < min_improvement * values[0]:
        return bad  # never learned: only a loss that stops being a number marks it
    midpoint = (values[0] + min(finite)) / 2
    step = 1 + max(step for step, v in enumerate(finite) if v <= midpoint)
    return step if step < len(values) else None


def range_summary(curve):
    """What one range test showed: its lowest smoothed loss and the learning rate there, the learning rate after which
    its loss left for good with the notebook's smoothing and with LONG_SMOOTHING (inf: never), and whether it learned at
    all (lowest smoothed loss below 90% of chance, ln 10)."""
    loss = smoothed(curve["loss"])
    lowest = min(loss)
    steps = [divergence_step(curve["loss"], beta) for beta in (0.9, LONG_SMOOTHING)]
    diverged_lr, diverged_lr_long = (curve["lr"][step] if step is not None else math.inf for step in steps)
    return {"lowest": lowest, "best_lr": curve["lr"][loss.index(lowest)], "diverged_lr": diverged_lr,
            "diverged_lr_long": diverged_lr_long, "learned": lowest < 0.9 * math.log(10)}


def _lrs(values):
    return ", ".join(f"{lr:.3g}" if math.isfinite(lr) else "never" for lr in values)


def divergence_table(curves):
    """Markdown: per network, the median over seeds of the lowest smoothed loss and its learning rate, and of the
    learning rate after which the loss left for good (each seed's beside it), with two smoothings."""
    rows = ["| network | seeds | lowest smoothed loss (median) | at lr (median) | loss leaves for good after lr: "
            "median (each seed) | the same, longer smoothing |", "| --- | --- | --- | --- | --- | --- |"]
    for name, runs in by_name(curves).items():
        summaries = [range_summary(c) for c in runs]
        cells = []
        for key in ("diverged_lr", "diverged_lr_long"):
            at = [r[key] for r in summaries]
            median = statistics.median(at)
            cells.append("never learned" if not any(r["learned"] for r in summaries) else
                         f"{median:.3g} ({_lrs(at)})" if math.isfinite(median) else f"not in the range ({_lrs(at)})")
        rows.append(f"| {name} | {len(runs)} | {statistics.median(r['lowest'] for r in summaries):.2f} "
                    f"| {statistics.median(r['best_lr'] for r in summaries):.3g} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def shared_statistics(norm, shape=(6, 8, 5), groups=4, micro_batch=None, at=(1, 2, 3)):
    """Which elements of an (N, C, H x W) activation share their mean and variance with the element `at`, asked of the
    study's own layer (model.norm_layer, in training mode): nudge that one element and see which outputs move. A
    boolean (N, C, H x W) tensor; what the GroupNorm paper's Figure 2 draws, computed instead of drawn by hand."""
    layer = norm_layer(norm, shape[1], groups, micro_batch).train()
    x = torch.randn(shape[0], shape[1], shape[2], 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    nudged = x.clone()
    nudged[at] += 1.0
    with torch.no_grad():
        layer = layer.double()
        moved = (layer(nudged) - layer(x)).abs() > 1e-9
    return moved[..., 0]


def _standardize(layer, x):
    """What the normalization `layer` computes from its input `x` before its learned scale and shift (batch
    statistics for BN, as in training)."""
    if isinstance(layer, nn.BatchNorm2d):
        return F.batch_norm(x, None, None, training=True, eps=layer.eps)
    return F.group_norm(x, layer.num_groups, eps=layer.eps)


@torch.no_grad()
def activation_statistics(model, images):
    """Per normalization layer, in order: each channel's mean and sd over the images and pixels (N, H, W) of the
    layer's input and of its normalized output before the learned scale and shift.

    Forward hooks on a copy of the model in training mode (BN with batch statistics, its running averages left
    alone) with dropout off. Rounded to 4 decimals, so that float noise between machines (the 7th digit) does not
    change the committed JSON from one execution to the next, and without signed zeros (+ 0.0 makes -0.0 0.0).
    Returns [{"channels", "before_mean", "before_sd", "after_mean", "after_sd"}, ...].
    """
    model = copy.deepcopy(model).train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    found = []

    def record(layer, inputs, output):
        x = inputs[0]
        z = _standardize(layer, x)
        found.append({"channels": x.shape[1], **{key: [round(v, 4) + 0.0 for v in value.tolist()] for key, value in (
            ("before_mean", x.mean((0, 2, 3))), ("before_sd", x.std((0, 2, 3), correction=0)),
            ("after_mean", z.mean((0, 2, 3))), ("after_sd", z.std((0, 2, 3), correction=0)))}})

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, NORM_LAYERS)]
    try:
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return found


def with_per_image_statistics(model):
    """A copy of a BatchNorm net whose BatchNorm layers normalize each image by its own statistics over its pixels, with
    the same learned scale and shift (InstanceNorm2d): what BatchNorm computes in training at micro-batch 1, where eval
    mode uses running averages instead. A run that trained well, fails in eval mode and scores high this way has
    weights that learned and running averages that do not stand in for per-image statistics."""
    own = copy.deepcopy(model).eval()
    for parent in list(own.modules()):
        for name, layer in parent.named_children():
            if isinstance(layer, nn.BatchNorm2d):
                instance = nn.InstanceNorm2d(layer.num_features, eps=layer.eps, affine=True).to(layer.weight.device)
                instance.load_state_dict({"weight": layer.weight, "bias": layer.bias})
                setattr(parent, name, instance)
    return own


def value_range(values):
    """The range of `values` as "low to high", two decimals: the range of the per-channel statistics in tables and findings."""
    return f"{min(values):.2f} to {max(values):.2f}"


def pooled(run, key):
    """The values of `key` ("after_mean", ...) over all channels of all layers of one activation_statistics run."""
    return [v for layer in run["layers"] for v in layer[key]]


def activation_table(activations):
    """Markdown view of [{"name", "weights", "layers": activation_statistics(...)}, ...]: over all channels of all
    normalized layers, the range of the per-channel mean and sd before and after the normalization."""
    rows = ["| network | weights | channel means before | channel sds before | channel means after "
            "| channel sds after |", "| --- | --- | --- | --- | --- | --- |"]
    for run in activations:
        rows.append(f"| {run['name']} | {run['weights']} | " + " | ".join(
            value_range(pooled(run, key)) for key in ("before_mean", "before_sd", "after_mean", "after_sd")) + " |")
    return "\n".join(rows)


def epochs_label(history):
    """How long a history trained, "5 epochs" or "1 epoch", for titles and findings."""
    return f"{history['epoch'][-1]} epoch" + "s" * (history["epoch"][-1] != 1)


def group_count(config):
    """The GroupNorm group count of a run's config: LN is GroupNorm with 1 group, the same computation."""
    model = config["model"]
    if model["norm"] not in ("ln", "gn"):
        raise ValueError(f"a group count needs a GroupNorm or LayerNorm run, not norm={model['norm']!r}")
    return 1 if model["norm"] == "ln" else model["groups"]


def finals_by_group(histories):
    """{group count: {seed: final test accuracy}} of GroupNorm (and LayerNorm: 1 group) runs."""
    finals = {}
    for h in histories:
        finals.setdefault(group_count(h["config"]), {})[h["seed"]] = h["test_acc"][-1]
    return finals


def group_comparisons(histories, study_groups):
    """The group-count family of the ANALYSIS: each count against the study's `study_groups`, paired by seed."""
    by_groups = {f"{g} group{'s' * (g > 1)}": accs for g, accs in sorted(finals_by_group(histories).items())}
    study = f"{study_groups} group{'s' * (study_groups > 1)}"
    return compare_family(by_groups, [(name, study) for name in by_groups if name != study])


def group_table(histories, study_groups):
    """Markdown: final test accuracy per GroupNorm group count, then each count against the study's, paired by seed."""
    rows = ["| groups | channels per group (8- / 16-channel layers) | seeds | final test acc: mean ± sd |",
            "| --- | --- | --- | --- |"]
    for groups, accs in sorted(finals_by_group(histories).items()):
        label = " (= LN)" if groups == 1 else " (the study's GN)" if groups == study_groups else ""
        rows.append(f"| {groups}{label} | {8 // groups} / {16 // groups} | {len(accs)} | {mean_sd(list(accs.values()))} |")
    return ("\n".join(rows) + f"\n\nEach count against the study's {study_groups}, final test accuracy paired by seed:\n\n"
            + family_table(group_comparisons(histories, study_groups)))


def near_zero_fraction(model, relative=0.01):
    """Fraction of conv weights whose |w| is below `relative` times the largest |w| of their layer.

    Relative, not absolute: a conv followed by a normalization layer computes the same function at any weight
    scale, so only the size of a weight compared with its layer's weights says whether it matters.
    """
    small = sum((w.abs() < relative * w.abs().max()).sum().item() for w in conv_weights(model))
    return small / sum(w.numel() for w in conv_weights(model))


def regularizer_report(runs):
    """For each {name: [(model, history), ...]} (one per seed), the near-zero fraction of conv weights and the
    generalization gap of the final models: loss and accuracy on the clean (unaugmented) training set vs the test set,
    both in eval mode, as train_model's final_evaluation stored them with each run.

    Returns {name: {"near_zero": [...], "train_loss": [...], "train_acc": [...], "test_loss": [...],
    "test_acc": [...]}}, one entry per run.
    """
    report = {}
    for name, pairs in runs.items():
        rows = report[name] = {"near_zero": [], "train_loss": [], "train_acc": [], "test_loss": [], "test_acc": []}
        for model, history in pairs:
            rows["near_zero"].append(near_zero_fraction(model))
            for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
                rows[key].append(history["final"][key])
    return report


def regularizer_table(report):
    """Markdown view of regularizer_report: mean ± sd over seeds of each figure and of the train-test gaps."""
    rows = ["| configuration | seeds | near-zero conv weights | clean train acc | test acc "
            "| accuracy gap (train - test) | loss gap (test - train) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in report.items():
        acc_gap = [a - b for a, b in zip(r["train_acc"], r["test_acc"])]
        loss_gap = [b - a for a, b in zip(r["train_loss"], r["test_loss"])]
        rows.append(f"| {name} | {len(r['test_acc'])} | {mean_sd([100 * f for f in r['near_zero']], '%', 1)} "
                    f"| {mean_sd(r['train_acc'])} | {mean_sd(r['test_acc'])} | {mean_sd(acc_gap, ' pts')} "
                    f"| {mean_sd(loss_gap, '', 4)} |")
    return "\n".join(rows)
