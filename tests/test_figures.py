"""Every figure is readable where it is shown, and says what its text says."""
import math

import matplotlib.text
import pytest
import torch

import plots
import probes
import utils
from model import Net
from helpers import fake_history

README_COLUMN_PX = 888  # GitHub shows a README at most this wide: a wider figure is scaled down to it
SMALLEST_PX = 9


def smallest_text_px(fig):
    """The height in pixels of the figure's smallest text as shown in the README column: its font size at the saved
    resolution, scaled down with the figure where the figure is wider than the column."""
    fig.canvas.draw()
    scale = min(1.0, README_COLUMN_PX / (fig.get_figwidth() * plots.DPI))
    sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
    return min(sizes) / 72 * plots.DPI * scale


def runs(name, finals, **extra):
    return [dict(fake_history(name, [97.0 + e / 10 for e in range(19)] + [final]), seed=seed,
                 trained_on="CPU (1 thread), torch 2.14.1", **extra) for seed, final in enumerate(finals, 1)]


def main_histories():
    return runs("BN + L1", [99.5, 99.6, 99.55]) + runs("LN", [99.4, 99.5, 99.45]) + runs("GN", [99.5, 99.45, 99.52])


def sweep_runs():
    return [{"name": "BN", "micro_batch_size": size, "seed": seed, "test_acc": [acc], "test_loss": [0.05],
             "train_acc": [97.0], "train_loss": [0.05]}
            for size, accs in ((1, [13.0, 14.0]), (8, [99.3, 99.35]), (128, [99.4, 99.42])) for seed, acc in
            enumerate(accs, 1)] + [{"name": name, "micro_batch_size": 128, "seed": seed, "test_acc": [acc],
                                    "test_loss": [0.05], "train_acc": [97.0], "train_loss": [0.05]}
                                   for name, accs in (("LN", [98.9, 98.8]), ("GN", [99.1, 99.2]))
                                   for seed, acc in enumerate(accs, 1)]


def range_curves():
    lrs = [10 ** (-3 + 5 * k / 399) for k in range(400)]
    shapes = {"BN": lambda k: 2.3 - 2.1 * min(k, 300) / 300 + (40.0 if k > 370 else 0),
              "LN": lambda k: 2.3 - 1.5 * min(k, 250) / 250 + (3.0 if 120 < k < 130 or k > 330 else 0),
              "GN": lambda k: 2.3 - 1.6 * min(k, 260) / 260 + (float("nan") if k > 350 else 0),
              "no norm, default init": lambda k: 2.3 + (60.0 if k > 300 else 0),
              "No norm": lambda k: 2.3 - 2.0 * min(k, 280) / 280 + (30.0 if k > 360 else 0)}
    return [{"name": name, "seed": seed, "lr": lrs, "loss": [shape(k) for k in range(400)]}
            for name, shape in shapes.items() for seed in (1, 2, 3)]


def figures(mnist):
    """One of each figure the notebook draws, made from data shaped like the study's."""
    (_, _), (test_x, test_y) = mnist
    histories = main_histories()
    mistakes = utils.misclassified(utils.predict(Net("ln"), test_x[:500])[:, 0], test_y[:500])
    grids = {f"{name}, seed 1": (mistakes, None) for name in ("BN + L1", "LN", "GN")}
    groups = [dict(h, config={"model": {"norm": "gn", "groups": g}}) for g in (2, 4, 8)
              for h in runs(f"GN {g}", [99.4, 99.5, 99.3])]
    activation = {"channels": 8, "before_mean": [0.1] * 8, "before_sd": [1.2] * 8, "after_mean": [0.0] * 8,
                  "after_sd": [1.0] * 8}
    activations = [{"name": name, "weights": weights, "layers": [activation] * 3}
                   for name in ("BN + L1", "LN", "GN") for weights in ("at initialization", "trained")]
    note = plots.trained_on(histories)
    return {
        "test_loss": plots.plot_metric(histories, "test_loss", "nats", "Test loss", note=note, log=True),
        "test_accuracy": plots.plot_metric(histories, "test_acc", "accuracy (%)", "Test accuracy", note=note, last=5),
        "train_curves": plots.plot_train_curves(histories, note=note),
        "misclassified": plots.plot_misclassified_grids(test_x, grids, note=note),
        "per_seed": plots.plot_per_seed(histories, note=note),
        "micro_batch_sweep": plots.plot_micro_batch_sweep(sweep_runs(), note=note),
        "weight_histograms": plots.plot_weight_histograms({"BN": [Net("bn")], "BN + L1": [Net("bn")]}, note=note),
        "activation_statistics": plots.plot_activation_statistics(activations, note=note),
        "lr_range": plots.plot_lr_range(range_curves(), note=note),
        "group_sweep": plots.plot_group_sweep(groups, 4, note=note),
        "normalization_axes": plots.plot_normalization_axes(),
        "budget": plots.plot_budget([dict(h, epoch=list(range(1, epochs + 1)), test_acc=[98.0 + epochs / 20] * epochs)
                                     for epochs in (1, 2, 4, 8, 20) for h in histories], note=note),
    }


@pytest.mark.slow
def test_every_figure_s_smallest_text_is_9_px_or_more_where_the_readme_shows_it(mnist):
    for name, fig in figures(mnist).items():
        assert smallest_text_px(fig) >= SMALLEST_PX, f"{name}: smallest text {smallest_text_px(fig):.1f} px"
        plots.plt.close(fig)


@pytest.mark.slow
def test_no_figure_s_note_overprints_another_text(mnist):
    """The note of where the runs were trained sits in the bottom-right corner, which tight layouts give to the axis
    labels: its box may touch no other text's (the range test's shared x-label once ran under it)."""
    for name, fig in figures(mnist).items():
        fig.canvas.draw()
        hidden = {id(t) for ax in fig.get_axes() if not ax.axison for t in ax.findobj(matplotlib.text.Text)
                  if t not in ax.texts and t is not ax.title}  # the tick labels of an axis turned off: never drawn
        texts = [t for t in fig.findobj(matplotlib.text.Text)
                 if t.get_visible() and t.get_text().strip() and id(t) not in hidden]
        notes = [t for t in texts if t.get_text().startswith("trained on")]
        for note in notes:
            box = note.get_window_extent()
            hit = [t.get_text() for t in texts if t is not note and box.overlaps(t.get_window_extent())]
            assert not hit, f"{name}: the note overprints {hit}"
        plots.plt.close(fig)


@pytest.mark.slow
def test_the_grid_footer_sits_below_the_digits(mnist):
    fig = figures(mnist)["misclassified"]
    fig.canvas.draw()
    note = next(t for t in fig.findobj(matplotlib.text.Text) if t.get_text().startswith("trained on"))
    top_of_note = note.get_window_extent().y1
    images = [ax.get_window_extent().y0 for sub in fig.subfigs for ax in sub.axes if ax.images]
    assert top_of_note <= min(images)
    plots.plt.close("all")


def test_the_range_test_marks_every_seed_that_leaves_and_spends_its_y_range_on_the_curves():
    curves = range_curves()
    fig = plots.plot_lr_range(curves)
    leaving = [c for c in curves if probes.divergence_step(c["loss"]) is not None]
    marks = [line for ax in fig.axes for line in ax.lines if line.get_marker() in ("x", "^")]
    assert len(marks) == len(leaving) == 12  # BN, LN, GN and the control leave in every seed; no norm never learned
    assert {line.get_marker() for line in marks} == {"x", "^"}  # the blow-ups above the plot at its top edge
    bottom, top = fig.axes[0].get_ylim()
    lowest = min(min(v for v in probes.smoothed(c["loss"]) if math.isfinite(v)) for c in curves)
    assert bottom <= lowest and top < 4 * 2.3  # not a decade of empty axis above the start
    assert [ax.get_title() for ax in fig.axes] == ["BN", "LN", "GN", "no norm, default init", "No norm", ""]
    assert not fig.axes[-1].axison  # the sixth panel is empty and hidden; one panel each, nothing tangles
    plots.plt.close(fig)


def test_the_sweep_s_reference_bands_are_labelled_and_the_legend_is_outside_the_axes():
    fig = plots.plot_micro_batch_sweep(sweep_runs())
    ax = fig.axes[0]
    assert {t.get_text() for t in ax.texts} >= {"LN (band ±1 sd)", "GN (band ±1 sd)"}
    fig.canvas.draw()
    legend, axes_box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.y1 <= axes_box.y0  # below the axes: it hides no band
    plots.plt.close(fig)


def test_the_weight_histogram_marks_the_near_zero_threshold_it_counts_with():
    torch.manual_seed(0)
    model = Net("bn")
    fig = plots.plot_weight_histograms({"BN": [model]})
    ax = fig.axes[0]
    assert [line.get_xdata()[0] for line in ax.lines] == [0.01]  # the threshold of probes.near_zero_fraction
    [label] = [t.get_text() for t in ax.get_legend().get_texts()]
    assert label == f"BN: {100 * probes.near_zero_fraction(model):.1f}% near zero"
    assert "pooled over seeds and conv layers" in ax.get_title()
    plots.plt.close(fig)


def test_the_group_figure_draws_each_seed_in_its_own_colour_across_the_counts():
    groups = [dict(h, config={"model": {"norm": "gn", "groups": g}}) for g in (2, 4, 8)
              for h in runs(f"GN {g}", [99.4, 99.5, 99.3])]
    fig = plots.plot_group_sweep(groups, 4)
    seeds = [line for line in fig.axes[0].lines if line.get_label().startswith("seed ")]
    assert [line.get_label() for line in seeds] == ["seed 1", "seed 2", "seed 3"]
    assert len({line.get_color() for line in seeds}) == 3 and all(len(line.get_xdata()) == 3 for line in seeds)
    plots.plt.close(fig)


@pytest.mark.parametrize("norm, options, samples, channels", [
    ("bn", {}, range(6), [2]),                        # one channel, every sample: (N, H, W)
    ("bn", {"micro_batch": 3}, range(3), [2]),        # one channel, the samples of its micro-batch
    ("ln", {}, [1], range(8)),                        # one sample, every channel: (C, H, W)
    ("gn", {"groups": 4}, [1], [2, 3]),               # one sample, its group of 8 / 4 = 2 channels
    ("gn", {"groups": 2}, [1], [0, 1, 2, 3]),
    ("gn", {}, [1], [2, 3]),                          # by default the study's 4 groups
])
def test_what_each_layer_averages_over_is_asked_of_the_layer_and_is_what_the_docs_say(norm, options, samples,
                                                                                      channels):
    shared = probes.shared_statistics(norm, shape=(6, 8, 5), at=(1, 2, 3), **options)
    expected = torch.zeros(6, 8, 5, dtype=torch.bool)
    expected[list(samples)[0]:list(samples)[-1] + 1, list(channels)[0]:list(channels)[-1] + 1, :] = True
    assert torch.equal(shared, expected)


def test_no_notebook_code_line_is_longer_than_120_characters():
    from helpers import NOTEBOOK
    long = [line for cell in NOTEBOOK["cells"] if cell["cell_type"] == "code"
            for line in "".join(cell["source"]).splitlines() if len(line) > 120]
    assert not long, long
