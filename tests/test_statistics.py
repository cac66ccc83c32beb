"""Seeds, statistics, the batch-size sweep and the regularizer analysis (issue 4)."""
import math

import pytest
import torch
from scipy import stats as scipy_stats

import findings
import plots
import probes
import stats
import utils
from model import Net
from helpers import fake_history


def test_summarize_matches_hand_computed_mean_std_and_t_interval():
    s = stats.summarize([1, 2, 3, 4, 5])
    assert s["n"] == 5 and s["mean"] == 3.0
    assert s["std"] == pytest.approx(math.sqrt(10 / 4))  # sum of squared deviations 10, n - 1 = 4
    assert s["ci95"] == pytest.approx(2.7764 * math.sqrt(2.5) / math.sqrt(5), abs=1e-4)  # t(0.975, 4) = 2.7764
    two = stats.summarize([99.5, 99.7])
    assert two["mean"] == pytest.approx(99.6) and two["std"] == pytest.approx(math.sqrt(0.02))
    assert two["ci95"] == pytest.approx(12.706 * math.sqrt(0.02) / math.sqrt(2), abs=1e-3)  # t(0.975, 1) = 12.706


def test_summarize_of_one_seed_has_no_spread_and_of_none_is_an_error():
    s = stats.summarize([99.4])
    assert s["mean"] == 99.4 and math.isnan(s["std"]) and math.isnan(s["ci95"])
    with pytest.raises(ValueError, match="at least one value"):
        stats.summarize([])


def test_welch_test_matches_hand_computation_and_scipy():
    a, b = [1, 2, 3, 4, 5], [2, 4, 6]  # means 3 and 4, variances 2.5 and 4
    difference, t, df, p = stats.welch_test(a, b)
    se2 = 2.5 / 5 + 4 / 3
    assert difference == -1.0
    assert t == pytest.approx(-1 / math.sqrt(se2))
    assert df == pytest.approx(se2 ** 2 / ((2.5 / 5) ** 2 / 4 + (4 / 3) ** 2 / 2))  # Welch-Satterthwaite, ~3.53
    reference = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert (t, p) == pytest.approx((reference.statistic, reference.pvalue))
    assert all(math.isnan(v) for v in stats.welch_test([99.5], [99.4, 99.6])[1:])
    assert all(math.isnan(v) for v in stats.welch_test([99.5, 99.5], [99.4, 99.4])[1:])


def histories_of(name, finals):
    return [dict(fake_history(name, [98.0, final]), seed=seed) for seed, final in enumerate(finals, 1)]


def test_seed_table_shows_mean_sd_and_interval_of_the_final_epoch():
    table = stats.seed_table(histories_of("LN", [99.5, 99.7]))
    row = table.splitlines()[2]
    assert row == "| LN | 2 | 99.60 ± 0.14% [98.33, 100.87] | 0.0500 |"  # 99.6 -+ 12.706 * 0.1414 / sqrt(2)
    assert "1 seed: no spread" in stats.seed_table(histories_of("GN", [99.5]))


def test_metric_plot_draws_the_seed_mean_over_each_seed_and_stays_in_range():
    runs = histories_of("BN", [99.0, 99.9])  # epoch 1: 98.0 both; epoch 2: 99.0 and 99.9
    fig = plots.plot_metric(runs + histories_of("GN", [99.3]), "test_acc", "accuracy (%)", "Test accuracy",
                            note="trained on CPU (1 threads)")
    ax = fig.axes[0]
    mean, *seeds, single = ax.lines
    assert list(mean.get_ydata()) == pytest.approx([98.0, 99.45])
    assert [list(line.get_ydata()) for line in seeds] == [[98.0, 99.0], [98.0, 99.9]]
    assert list(single.get_ydata()) == [98.0, 99.3]  # the single-seed configuration: its own line only
    # a ±1 sd band would reach 99.45 + 0.64 = 100.09%: above what an accuracy can be; each seed's line cannot
    assert max(max(line.get_ydata()) for line in ax.lines) <= 100
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["BN", "GN", "thin: each seed; bold: their mean"]
    plots.plt.close(fig)
    loss = plots.plot_metric(runs, "test_loss", "nats", "Test loss", log=True).axes[0]
    assert loss.get_yscale() == "log"
    zoomed = plots.plot_metric(runs, "test_acc", "accuracy (%)", "Test accuracy", last=1).axes[0]
    [inset] = zoomed.child_axes  # the last epoch, zoomed to its seeds: 99.0 to 99.9 with a margin
    assert inset.get_xlim() == (1.5, 2.5) and inset.get_ylim()[0] < 99.0 and 99.9 < inset.get_ylim()[1] < 100
    assert "trained on CPU (1 threads)" in [t.get_text() for t in fig.texts]
    plots.plt.close(fig)


def sweep_history(name, micro_batch_size, test_acc, seed=1, train_acc=None):
    """A sweep run's history; by default it trained as well as it tests, and a run below 50% at test diverged."""
    train_acc = test_acc if train_acc is None else train_acc
    return {"name": name, "micro_batch_size": micro_batch_size, "seed": seed, "test_acc": [test_acc],
            "test_loss": [0.05 if test_acc > 50 else 2.3], "train_acc": [train_acc],
            "train_loss": [0.05 if train_acc > 50 else 2.3]}


def test_micro_batch_table_and_plot_average_seeds_and_mark_diverged_runs(tmp_path):
    sweep = [sweep_history("BN", 2, 97.0), sweep_history("BN", 2, 9.8, seed=2),  # seed 2 diverged
             sweep_history("BN", 128, 99.0), sweep_history("BN", 128, 99.2, seed=2),
             sweep_history("LN", 128, 98.8), sweep_history("LN", 128, 98.6, seed=2)]
    table = stats.sweep_table(sweep).splitlines()
    assert table[0] == "| micro-batch | BN | LN |"
    assert table[2] == "| 2 | 97.00% (1 of 2 diverged) | - |"
    assert table[3] == "| 128 | 99.10% ± 0.14 | 98.70% ± 0.14 |"
    fig = plots.plot_micro_batch_sweep(sweep, tmp_path / "sweep.png")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "final test accuracy (%)"  # as the table: accuracy
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "128"]  # plain numbers, only the sizes swept
    bn = next(c for c in ax.containers if c.get_label() == "BN")
    assert list(bn.lines[0].get_ydata()) == pytest.approx([97.0, 99.1])  # BN's mean, diverged seed left out
    reference = next(line for line in ax.lines if line.get_label().startswith("LN at 128 (per-sample"))
    assert list(reference.get_ydata()) == pytest.approx([98.7, 98.7])  # flat across the axis
    marker = next(line for line in ax.lines if line.get_label() == "BN: diverged")
    assert list(marker.get_xdata()) == [2] and list(marker.get_ydata()) == [0.03]  # bottom edge, axes fraction
    assert ax.get_ylim()[0] > 90  # the diverged run's 9.8% does not set the scale
    assert (tmp_path / "sweep.png").stat().st_size > 5_000
    plots.plt.close(fig)


def test_a_run_that_trained_but_fails_at_test_is_averaged_in_and_drawn_below_the_axis():
    """BN at micro-batch 1: training reaches 97% with per-image statistics, eval mode's running averages give ~7%.
    That is the result at that size, not a failed run: it counts in the mean, and the table and the plot say so."""
    sweep = [sweep_history("BN", 1, 6.0, 1, train_acc=97.1), sweep_history("BN", 1, 10.0, 2, train_acc=97.5),
             sweep_history("BN", 8, 99.0), sweep_history("BN", 8, 98.8, 2),
             sweep_history("BN", 128, 99.2), sweep_history("BN", 128, 99.4, 2)]
    assert [stats.diverged(h) or stats.fails_at_test(h) for h in sweep] == [True, True, False, False, False, False]
    assert not any(map(stats.diverged, sweep))
    assert stats.sweep_table(sweep).splitlines()[2] == "| 1 | 8.00% ± 2.83 (2 of 2 below 50% at test) |"
    fig = plots.plot_micro_batch_sweep(sweep)
    ax = fig.axes[0]
    bn = next(c for c in ax.containers if c.get_label() == "BN")
    assert list(bn.lines[0].get_xdata()) == [8, 128] and ax.get_ylim()[0] > 90  # the 8% mean does not set the scale
    below = next(line for line in ax.lines if line.get_label() == "BN: mean below 50% at test (written beside)")
    assert list(below.get_xdata()) == [1] and list(below.get_ydata()) == [0.03]
    assert [t.get_text() for t in ax.texts] == ["8.0%"]
    plots.plt.close(fig)
    text = findings.findings(histories_of("BN + L1", [99.5, 99.6]), sweep=sweep, per_image=[98.7, 98.9])
    assert "- **Micro-batch sweep, BN**: micro-batch 1 8.00% ± 2.83, 128 99.30% ± 0.14; each size against 128, paired " \
           "by seed (points): different beyond ±0.2: micro-batch 1 (-91.30 [" in text
    assert "below 50% at test though training reached 97.1-97.5% (running train accuracy): 2 of 2 at micro-batch 1." \
        in text
    assert ("- **BN at micro-batch 1**, test accuracy in eval mode (running averages) 8.00% ± 2.83; the same weights "
            "with each test image normalized by its own statistics, as in training, 98.80% ± 0.14.") in text


def test_a_run_is_diverged_when_its_training_loss_is_not_finite_or_its_training_ends_below_half():
    assert stats.diverged({"train_loss": [0.1, math.nan], "train_acc": [98.0, 99.0]})
    assert stats.diverged({"train_loss": [0.1, 2.3], "train_acc": [98.0, 11.35]})
    assert not stats.diverged({"train_loss": [2.3, 0.1], "train_acc": [11.35, 98.0]})
    assert stats.fails_at_test({"train_loss": [0.1], "train_acc": [97.0], "test_acc": [8.0]})
    assert not stats.fails_at_test({"train_loss": [0.1], "train_acc": [97.0], "test_acc": [98.0]})
    assert stats.fails_at_test({"train_loss": [0.1], "train_acc": [97.0], "test_acc": [math.nan]})


def test_near_zero_fraction_counts_small_weights_relative_to_their_layer():
    model = Net("bn")
    weights = utils.conv_weights(model)
    total = sum(w.numel() for w in weights)
    with torch.no_grad():
        for w in weights:
            w.fill_(1.0)
        weights[0].view(-1)[:10] = 0.001   # below 1% of its layer's largest weight
        weights[1].view(-1)[:5] = 0.02     # above it
        weights[2].mul_(1000)              # scale does not matter
        weights[2].view(-1)[:3] = 5.0      # 0.5% of 1000: near zero
    assert probes.near_zero_fraction(model) == pytest.approx(13 / total)
    assert probes.near_zero_fraction(model, relative=0.05) == pytest.approx(18 / total)
    with torch.no_grad():
        weights[3].view(-1)[:4] = 0.01     # exactly 1% of its layer's largest: not below it
    assert probes.near_zero_fraction(model) == pytest.approx(13 / total)


def test_regularizer_report_reads_the_clean_evaluation_each_run_stored(tiny):
    runs = {"BN": utils.train_model({"name": "BN", "model": {"norm": "bn"}}, tiny, 1, batch_size=64, progress=False),
            "GN": utils.train_model({"name": "GN", "model": {"norm": "gn"}}, tiny, 1, batch_size=64, seeds=(1, 2), progress=False)}
    report = probes.regularizer_report(runs)
    (train_x, train_y), (test_x, test_y) = tiny
    assert len(report["GN"]["test_acc"]) == 2
    second = runs["GN"][1][0]
    [(_, train_acc)], [(test_loss, _)] = utils.evaluate(second, train_x, train_y), utils.evaluate(second, test_x, test_y)
    assert report["GN"]["train_acc"][1] == pytest.approx(train_acc, abs=1e-9)  # clean, eval mode
    assert report["GN"]["test_loss"][1] == runs["GN"][1][1]["test_loss"][-1] == pytest.approx(test_loss, rel=1e-5)
    assert report["BN"]["near_zero"] == [probes.near_zero_fraction(runs["BN"][0][0])]


def test_regularizer_table_reports_gaps_as_train_minus_test_accuracy_and_test_minus_train_loss():
    report = {"BN + L1": {"near_zero": [0.10, 0.20], "train_acc": [99.8, 99.9], "test_acc": [99.5, 99.4],
                          "train_loss": [0.010, 0.012], "test_loss": [0.020, 0.018]}}
    row = probes.regularizer_table(report).splitlines()[2]
    # near-zero 15.0 ± 7.1 %; accuracy gaps 0.3 and 0.5 -> 0.40 ± 0.14; loss gaps 0.010 and 0.006 -> 0.0080 ± 0.0028
    assert row == ("| BN + L1 | 2 | 15.0% ± 7.1 | 99.85% ± 0.07 | 99.45% ± 0.07 | 0.40 pts ± 0.14 "
                   "| 0.0080 ± 0.0028 |")


def test_weight_histogram_plot_has_one_outline_per_configuration(tmp_path):
    models = {"BN": [Net("bn"), Net("bn")], "BN + L1": [Net("bn")]}
    fig = plots.plot_weight_histograms(models, tmp_path / "weights.png")
    ax = fig.axes[0]
    assert [t.get_text().split(":")[0] for t in ax.get_legend().get_texts()] == ["BN", "BN + L1"]
    assert ax.get_xscale() == "log" and (tmp_path / "weights.png").stat().st_size > 5_000
    plots.plt.close(fig)


def test_findings_are_computed_from_the_histories():
    main = histories_of("BN + L1", [99.50, 99.52, 99.54]) + histories_of("LN", [99.30, 99.31, 99.33]) \
        + histories_of("GN", [99.45, 99.55, 99.48])
    reg = histories_of("BN", [99.49, 99.53, 99.51]) + histories_of("BN + L2", [99.40, 99.60, 99.50])
    sweep = [sweep_history("BN", 2, acc, seed) for seed, acc in enumerate([97.0, 97.4], 1)] \
        + [sweep_history("BN", 128, acc, seed) for seed, acc in enumerate([99.0, 99.3], 1)]
    text = findings.findings(main, reg, sweep)
    assert text.startswith(f"- **Main study**: {findings.answer(main)}\n")
    [bn_l1_ln, *_] = stats.compare_family(stats.finals_by_seed(main))
    assert bn_l1_ln["p"] == pytest.approx(scipy_stats.ttest_rel([99.50, 99.52, 99.54], [99.30, 99.31, 99.33]).pvalue)
    low, high = bn_l1_ln["ci95"]
    assert f"BN + L1 − LN +0.21 [{low:+.2f}, {high:+.2f}] points, different: BN + L1 higher; within or beyond ±0.2 undecided" in text
    [two] = stats.sweep_comparisons(sweep)["BN"]
    assert two["difference"] == pytest.approx(-1.95)
    assert (f"- **Micro-batch sweep, BN**: micro-batch 2 97.20% ± 0.28, 128 99.15% ± 0.21; each size against 128, "
            f"paired by seed (points): {findings.FAMILY_LABELS[two['verdict']]}: micro-batch 2 "
            f"({stats.interval(two)}).") in text
    assert "**Regularizers** (final test accuracy): BN 99.51% ± 0.02, BN + L1 99.52% ± 0.02, BN + L2 99.50% ± 0.10; " \
           "paired by seed: BN + L1 − BN +0.01 [" in text


def test_micro_batch_plot_of_only_diverged_runs_still_draws():
    fig = plots.plot_micro_batch_sweep([sweep_history("BN", 8, 9.8), sweep_history("GN", 64, 11.2)])
    assert [line.get_label() for line in fig.axes[0].lines] == ["BN: diverged", "GN: diverged"]
    plots.plt.close(fig)


def test_findings_say_what_the_range_tests_the_group_sweep_and_the_activations_showed():
    lrs = [10 ** (-3 + k / 20) for k in range(100)]  # 1e-3 to about 90
    curves = [{"name": "BN", "seed": 1, "lr": lrs, "loss": [2.3] * 20 + [0.5] * 40 + [2.3] * 40},
              {"name": "no norm", "seed": 1, "lr": lrs, "loss": [2.3] * 100}]
    groups = [dict(fake_history(f"GN {g}", [98.0, acc]), seed=1, config={"model": {"norm": "gn", "groups": g}})
              for g, acc in ((1, 99.1), (4, 99.3))]
    activations = [{"name": "LN", "weights": "trained", "layers": [
        {"channels": 2, "before_mean": [0.0, 1.0], "before_sd": [1.0, 2.0], "after_mean": [-0.4, 0.3],
         "after_sd": [0.8, 1.1]}]}]
    text = findings.findings(histories_of("A", [99.5, 99.6]), curves=curves, group_histories=groups, study_groups=4,
                          activations=activations)
    at, lowest = lrs[probes.divergence_step(curves[0]["loss"])], min(probes.smoothed(curves[0]["loss"]))
    assert 0.5 < lowest < 0.55  # the moving average has not quite reached 0.5 after 40 steps
    long = lrs[probes.divergence_step(curves[0]["loss"], probes.LONG_SMOOTHING)]
    assert (f"BN reached a loss of {lowest:.2f}; it left for good after lr {at:.3g} ({long:.3g} with the longer "
            "smoothing); no norm never learned (lowest smoothed loss 2.30") in text
    assert "**GroupNorm group count** (2 epochs, final test accuracy, each count against the study's 4, paired by " \
           "seed): 1 group − 4 groups -0.20 points, untestable (needs 2+ paired seeds with some spread)." in text
    assert "LN means -0.40 to 0.30, sds 0.80 to 1.10." in text
