"""The one analysis of every comparison (stats.ANALYSIS): paired by seed, the paired t-test with Holm's correction
decides, an exact sign-flip test and Welch's test beside it, each difference with its interval, and an equivalence
margin fixed in advance."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

import findings
import probes
import stats
import store
from model import Net
from helpers import fake_history

IMAGES = Path(__file__).resolve().parent.parent / "images"


def histories_of(name, finals, seeds=None):
    return [dict(fake_history(name, [98.0, final]), seed=seed)
            for seed, final in zip(seeds or range(1, len(finals) + 1), finals)]


def test_the_paired_difference_equals_scipy_and_a_hand_computation():
    a, b = [99.50, 99.58, 99.47, 99.61, 99.55], [99.41, 99.52, 99.44, 99.50, 99.47]
    r = stats.paired_difference(a, b)
    d = np.subtract(a, b)  # 0.09, 0.06, 0.03, 0.11, 0.08
    se = d.std(ddof=1) / math.sqrt(5)
    assert r["n"] == 5 and r["df"] == 4 and r["difference"] == pytest.approx(0.074)
    assert r["t"] == pytest.approx(0.074 / se)
    assert r["p"] == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
    assert r["ci95"] == pytest.approx(scipy_stats.t.interval(0.95, 4, loc=0.074, scale=se))
    assert r["ci90"] == pytest.approx(scipy_stats.t.interval(0.90, 4, loc=0.074, scale=se))
    assert r["p_welch"] == pytest.approx(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)
    # the same numbers unpaired: the seed-to-seed spread both sides share hides the difference from Welch's test
    assert r["p_welch"] > 0.05 > r["p"]


def test_a_paired_comparison_needs_equal_sides_and_has_no_interval_without_spread():
    with pytest.raises(ValueError, match="one value per seed on each side, got 3 and 2"):
        stats.paired_difference([1, 2, 3], [1, 2])
    for a, b in (([99.5], [99.4]), ([99.5, 99.6], [99.4, 99.5])):  # one pair; equal differences
        r = stats.paired_difference(a, b)
        assert math.isnan(r["p"]) and all(map(math.isnan, r["ci95"] + r["ci90"]))


def test_the_sign_flip_test_is_exact():
    # |±1 ±2 ±3| >= 6 for 2 of the 8 sign patterns
    assert stats.sign_flip_p([1, 2, 3]) == 2 / 8
    assert stats.sign_flip_p([0.1] * 10) == 2 / 1024  # the smallest p with 10 pairs
    assert stats.sign_flip_p([0.1] * 5) == 2 / 32  # with 5 pairs nothing goes below 0.0625
    assert stats.sign_flip_p([0.3, -0.1, 0.2, 0.25, -0.05, 0.15]) == pytest.approx(scipy_stats.permutation_test(
        ([0.3, -0.1, 0.2, 0.25, -0.05, 0.15],), np.mean, permutation_type="samples", n_resamples=np.inf).pvalue)
    for wrong in ([], [0.1] * 21):
        with pytest.raises(ValueError, match=f"1 to 20 differences, got {len(wrong)}"):
            stats.sign_flip_p(wrong)


def test_holm_multiplies_the_k_th_smallest_p_by_m_minus_k_and_keeps_the_order():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # 3 x 0.01, max(2 x 0.03, 0.03), ...
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    adjusted = stats.holm([0.02, math.nan, 0.04])  # an untestable comparison does not count
    assert adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)


SEED_BASE = [99.5 + x for x in (0.00, 0.10, -0.08, 0.05, -0.12, 0.07, -0.03, 0.09, -0.06, 0.02)]  # per seed, both sides
UNDECIDED_GAPS = (0.40, -0.35, 0.20, -0.30, 0.45, -0.25, 0.10, -0.40, 0.35, -0.05)  # mean +0.01, spread far past 0.2


def family_of(**sides):
    return {name: dict(enumerate(values, 1)) for name, values in sides.items()}


def test_each_verdict_is_reached_where_the_analysis_says():
    base = SEED_BASE

    def verdict(gaps):
        return stats.compare_family(family_of(a=[b + g for b, g in zip(base, gaps)], b=base))[0]["verdict"]

    assert verdict([0.30, 0.28, 0.33, 0.31, 0.29, 0.32, 0.30, 0.27, 0.31, 0.30]) == "beyond"  # 0.30 ± 0.02
    assert verdict([0.05 + g / 100 for g in range(10)]) == "within"  # 0.095 ± 0.03
    assert verdict([0.20 + g / 100 for g in (10, -10, 5, -5, 8, -8, 0, 3, -3, 0)]) == "different"  # 0.20: size open
    assert verdict([0.02, -0.03, 0.01, 0.04, -0.02, 0.00, 0.03, -0.01, 0.02, -0.04]) == "equivalent"
    assert verdict(UNDECIDED_GAPS) == "undecided"
    assert stats.compare_family(family_of(a=[99.6], b=[99.5]))[0]["verdict"] == "untestable"


def test_the_margin_tests_are_the_intervals_they_stand_for():
    """Equivalence by two one-sided tests at 5% is the 90% interval inside the margin; "beyond" at 5% (doubled) is
    the 95% interval beyond it: a margin at an interval's end gives p 0.05."""
    gaps = [0.15, 0.05, 0.12, 0.08, 0.10, 0.11, 0.09, 0.13, 0.07, 0.10]  # mean 0.10
    values = family_of(a=[99.5 + g for g in gaps], b=[99.5] * 10)
    [result] = stats.compare_family(values)
    assert stats.compare_family(values, margin=result["ci90"][1])[0]["p_equivalence"] == pytest.approx(0.05)
    assert stats.compare_family(values, margin=result["ci95"][0])[0]["p_beyond"] == pytest.approx(0.05)
    assert stats.compare_family(values, margin=0.2)[0]["verdict"] == "within"
    assert stats.compare_family(values, margin=0.1)[0]["verdict"] == "different"  # the mean sits on the margin
    assert stats.compare_family(values, margin=0.05)[0]["verdict"] == "beyond"


def test_holm_corrects_the_equivalence_verdicts_of_a_family_as_it_does_the_differences():
    gaps = [0.20, -0.14, 0.31, -0.07, 0.17, 0.25, -0.17, 0.28, 0.03, 0.06]  # alone just inside ±0.2 (TOST p 0.042)
    base = [99.5] * 10
    alone = stats.compare_family(family_of(a=[b + g for b, g in zip(base, gaps)], b=base))[0]
    assert 0.05 / 3 < alone["p_equivalence"] < 0.05 and alone["verdict"] == "equivalent"
    three = family_of(a=[b + g for b, g in zip(base, gaps)], b=base, c=[b - g for b, g in zip(base, gaps)])
    first = stats.compare_family(three, [("a", "b"), ("c", "b"), ("a", "c")])[0]
    assert first["p_equivalence"] == pytest.approx(alone["p_equivalence"]) and first["verdict"] == "undecided"


def test_holm_is_applied_within_a_family_not_across_it():
    gaps = [0.06, -0.01, 0.09, -0.03, 0.05, 0.07, -0.02, 0.08, 0.01, 0.02]  # p 0.046: alone it is a difference
    base = [99.5] * 10
    alone = stats.compare_family(family_of(a=[b + g for b, g in zip(base, gaps)], b=base))[0]
    assert 0.05 / 3 < alone["p"] < 0.05 and alone["verdict"] == "within"
    three = family_of(a=[b + g for b, g in zip(base, gaps)], b=base, c=[b + 0.3 * g for b, g in zip(base, gaps)])
    results = stats.compare_family(three)  # a vs b, a vs c, b vs c
    assert [(r["a"], r["b"]) for r in results] == [("a", "b"), ("a", "c"), ("b", "c")]
    first = results[0]
    assert first["p"] == pytest.approx(alone["p"]) and first["p_holm"] > 0.05 and first["verdict"] == "equivalent"


def test_pairs_are_the_seeds_both_sides_have_whatever_their_order():
    values = {"a": {2: 99.0, 1: 98.0, 4: 97.0}, "b": {1: 97.5, 2: 98.0, 3: 96.0}}
    [r] = stats.compare_family(values)
    assert r["seeds"] == [1, 2] and r["n"] == 2 and r["difference"] == pytest.approx(0.75)  # (0.5 + 1.0) / 2


def test_the_table_and_the_answer_say_what_the_family_says():
    main = histories_of("BN + L1", [99.50, 99.52, 99.54, 99.55, 99.49]) + \
        histories_of("LN", [99.30, 99.31, 99.33, 99.36, 99.29]) + histories_of("GN", [99.45, 99.75, 99.38, 99.20, 99.70])
    results = stats.compare_family(stats.finals_by_seed(main))
    table = stats.comparison_table(main).splitlines()
    answer = findings.answer(main)
    assert answer.startswith("Final test accuracy, mean ± sd over 5 seeds: BN + L1 99.52% ± 0.03, GN 99.50% ± 0.23, "
                             "LN 99.32% ± 0.03.")
    for r, row in zip(results, table[2:]):
        low, high = r["ci95"]
        words = stats.verdict_words(r).replace("**", "")
        assert f"{r['a']} − {r['b']} {r['difference']:+.2f} [{low:+.2f}, {high:+.2f}] points, {words}" in answer
        assert row.startswith(f"| {r['a']} vs {r['b']} | 5 | {r['difference']:+.2f} [{low:+.2f}, {high:+.2f}] | "
                              f"[{r['ci90'][0]:+.2f}, {r['ci90'][1]:+.2f}] |")
        assert stats.verdict_words(r) in row
    assert [r["verdict"] for r in results] == ["different", "undecided", "undecided"]


def test_the_notebook_and_the_readme_state_the_analysis_before_the_numbers():
    from helpers import NOTEBOOK, ROOT
    flat = " ".join(stats.ANALYSIS.split())
    cells = [" ".join("".join(c["source"]).split()) for c in NOTEBOOK["cells"]]
    stated = next(i for i, cell in enumerate(cells) if flat in cell)
    first_table = next(i for i, cell in enumerate(cells) if "stats.seed_table" in cell)
    assert stated < first_table
    assert flat in " ".join((ROOT / "README.md").read_text().split())


def sweep_run(size, seed, acc, train_acc=None):
    return {"name": "BN", "micro_batch_size": size, "seed": seed, "test_acc": [acc], "test_loss": [0.05],
            "train_acc": [train_acc or acc], "train_loss": [0.05 if (train_acc or acc) > 50 else 2.3]}


def test_the_micro_batch_family_is_each_size_against_the_largest_and_leaves_diverged_pairs_out():
    runs = [sweep_run(size, seed, acc) for size, accs in ((8, [99.0, 98.9, 99.1]), (32, [99.2, 99.3, 99.25]),
                                                           (128, [99.3, 99.31, 99.28])) for seed, acc in enumerate(accs, 1)]
    runs[0] = sweep_run(8, 1, 9.8)  # seed 1 diverged at micro-batch 8
    [(name, results)] = stats.sweep_comparisons(runs).items()
    assert name == "BN" and [(r["a"], r["b"], r["seeds"]) for r in results] == [
        ("micro-batch 8", "micro-batch 128", [2, 3]), ("micro-batch 32", "micro-batch 128", [1, 2, 3])]
    assert results[1]["difference"] == pytest.approx((-0.1 - 0.01 - 0.03) / 3)
    assert results[0]["p_holm"] == pytest.approx(min(1, 2 * min(r["p"] for r in results))) or \
        results[1]["p_holm"] == pytest.approx(min(1, 2 * min(r["p"] for r in results)))


def test_the_regularizer_family_is_each_penalty_against_plain_bn():
    main = histories_of("BN + L1", [99.50, 99.52, 99.54]) + histories_of("LN", [99.3, 99.3, 99.3])
    reg = histories_of("BN", [99.49, 99.53, 99.51]) + histories_of("BN + L2", [99.40, 99.60, 99.50])
    finals, results = findings.regularizer_comparisons(main, reg)
    assert list(finals) == ["BN", "BN + L1", "BN + L2"]
    assert [(r["a"], r["b"]) for r in results] == [("BN + L1", "BN"), ("BN + L2", "BN")]
    assert results[0]["difference"] == pytest.approx(0.01)


def test_the_group_family_takes_ln_as_one_group_and_compares_each_count_with_the_study():
    runs = [dict(fake_history(name, [98.0, acc]), seed=seed, config={"name": name, "model": model})
            for name, model, accs in (("LN", {"norm": "ln"}, [99.1, 99.2, 99.15]),
                                      ("GN 4", {"norm": "gn", "groups": 4}, [99.3, 99.35, 99.28]),
                                      ("GN 8", {"norm": "gn", "groups": 8}, [99.31, 99.33, 99.30]))
            for seed, acc in enumerate(accs, 1)]
    assert list(probes.finals_by_group(runs)) == [1, 4, 8]
    results = probes.group_comparisons(runs, study_groups=4)
    assert [(r["a"], r["b"]) for r in results] == [("1 group", "4 groups"), ("8 groups", "4 groups")]
    assert results[0]["p"] == pytest.approx(scipy_stats.ttest_rel([99.1, 99.2, 99.15], [99.3, 99.35, 99.28]).pvalue)
    table = probes.group_table(runs, study_groups=4)
    assert "| 1 (= LN) | 8 / 16 | 3 | 99.15% ± 0.05 |" in table and "| 4 (the study's GN) | 2 / 4 | 3 |" in table
    assert stats.family_table(results) in table
    with pytest.raises(ValueError, match="not norm='bn'"):
        probes.group_count({"model": {"norm": "bn"}})
    for study, others in ((1, ["4 groups", "8 groups"]), (8, ["1 group", "4 groups"])):  # "1 group", not "1 groups"
        assert [(r["a"], r["b"]) for r in probes.group_comparisons(runs, study)] == [
            (name, f"{study} group{'s' * (study > 1)}") for name in others]
    two = [dict(run, config={"name": "GN 2", "model": {"norm": "gn", "groups": 2}}) for run in runs[6:]]
    assert [(r["a"], r["b"]) for r in probes.group_comparisons(runs[:3] + two, 2)] == [("1 group", "2 groups")]


def test_a_title_says_how_many_epochs_the_runs_trained():
    assert probes.epochs_label({"epoch": [1]}) == "1 epoch"
    assert probes.epochs_label({"epoch": [1, 2, 3]}) == "3 epochs"


def test_the_layer_table_lists_only_the_layers_that_differ_between_two_nets():
    table = probes.layer_table({"BN": Net("bn"), "no norm": Net("none")})
    rows = table.splitlines()
    assert len(rows) == 2 + 6 + 1 and rows[2] == "| BatchNorm2d-2 | BatchNorm2d(8): 16 parameters, 17 stored statistics " \
        "| Identity: 0 parameters |"
    assert rows[-1] == "| all layers | 9,752 parameters | 9,576 parameters |"  # 176 norm parameters fewer


def cells(line):
    """The cells of one Markdown table row, which must start and end with a pipe."""
    assert line.startswith("| ") and line.endswith(" |"), f"not a table row: {line!r}"
    return [cell.strip() for cell in line[2:-2].split(" | ")]


def assert_well_formed(table, header):
    """A Markdown table GitHub renders: the expected header, a separator of as many columns, rows of as many cells."""
    lines = table.splitlines()
    assert cells(lines[0]) == header
    assert lines[1] == "|" + " --- |" * len(header)
    assert all(len(cells(line)) == len(header) for line in lines[2:])


def test_every_table_of_the_analysis_is_well_formed_markdown_with_the_columns_it_promises():
    main = histories_of("BN + L1", [99.50, 99.52, 99.54]) + histories_of("LN", [99.30, 99.31, 99.36])
    assert_well_formed(stats.seed_table(main), ["configuration", "seeds", "final test acc: mean ± sd [95% CI]",
                                                "final test loss (mean)"])
    assert_well_formed(stats.comparison_table(main), [
        "comparison", "pairs", "a - b (points) [95% CI]", "90% CI", "paired t p (Holm)", "sign-flip p", "Welch p",
        "verdict"])
    assert_well_formed(stats.per_seed_table(main), ["seed", "BN + L1", "LN"])
    sweep = [sweep_run(size, seed, acc) for size, accs in ((8, [99.0, 98.9]), (128, [99.3, 99.31]))
             for seed, acc in enumerate(accs, 1)]
    sweep += [dict(sweep_run(128, seed, acc), name="LN") for seed, acc in ((1, 98.8), (2, 98.9))]
    assert_well_formed(stats.sweep_table(sweep), ["micro-batch", "BN", "LN"])


def test_the_per_seed_table_pairs_the_seeds_every_configuration_has():
    main = histories_of("BN + L1", [99.50, 99.52, 99.54], seeds=[1, 2, 3]) + \
        histories_of("LN", [99.30, 99.36], seeds=[3, 1])
    lines = stats.per_seed_table(main).splitlines()
    assert lines[2:] == ["| 1 | 99.50% | 99.36% |", "| 3 | 99.54% | 99.30% |"]  # seed 2 has no LN run


def test_tables_and_accuracies_read_the_final_epoch_not_another():
    runs = [dict(fake_history("LN", [97.0, 98.0, 99.0 + seed / 10]), seed=seed) for seed in (1, 2)]
    assert stats.final_test_accuracies(runs) == {"LN": [99.1, 99.2]}
    assert stats.seed_table(runs).splitlines()[2].endswith(f"| {0.1 / 3:.4f} |")  # test loss of epoch 3 of 3


def test_an_untestable_comparison_shows_dashes_where_there_is_no_interval_or_p():
    [result] = stats.compare_family(family_of(a=[99.6], b=[99.5]))
    row = cells(stats.family_table([result]).splitlines()[2])
    assert row[:4] == ["a vs b", "1", "+0.10", "-"] and row[4] == "- (-)" and row[6] == "-"  # Welch needs 2 a side


def test_a_difference_names_the_higher_side():
    base = SEED_BASE
    lower = stats.compare_family(family_of(a=[b - 0.3 + g / 100 for g, b in enumerate(base)], b=base))[0]
    assert lower["verdict"] == "beyond" and "b higher" in stats.verdict_words(lower)
    assert "a higher" in stats.verdict_words(dict(lower, verdict="within", difference=0.15))


def test_a_run_fails_at_test_below_50_percent_only():
    assert stats.fails_at_test(sweep_run(1, 1, 49.99, train_acc=97.0))
    assert not stats.fails_at_test(sweep_run(1, 1, 50.0, train_acc=97.0))
    assert not stats.fails_at_test(sweep_run(1, 1, 50.5, train_acc=97.0))


def test_a_normalization_trained_at_one_micro_batch_only_has_no_micro_batch_family():
    runs = [sweep_run(size, seed, 99.0 + seed / 10) for size in (8, 128) for seed in (1, 2)]
    runs += [dict(sweep_run(128, seed, 98.9), name="LN") for seed in (1, 2)]  # the flat reference
    assert list(stats.sweep_comparisons(runs)) == ["BN"]


def test_the_verdict_words_of_an_equivalent_and_an_undecided_pair():
    base = SEED_BASE
    equivalent = stats.compare_family(family_of(a=[b + g / 100 for g, b in zip((2, -3, 1, 4, -2, 0, 3, -1, 2, -4),
                                                                                 base)], b=base))[0]
    undecided = stats.compare_family(family_of(a=[b + g for g, b in zip(UNDECIDED_GAPS, base)], b=base))[0]
    assert stats.verdict_words(equivalent) == "equivalent within ±0.2"
    assert stats.verdict_words(undecided) == "undecided"


def test_the_verdict_edge_p_at_alpha_is_no_difference():
    values = family_of(a=[99.5, 99.6, 99.7], b=[99.4, 99.4, 99.5])
    [result] = stats.compare_family(values, alpha=stats.compare_family(values)[0]["p_holm"])
    assert result["verdict"] not in ("beyond", "within", "different")  # different needs p below alpha, not equal


def test_holm_caps_at_one_and_welch_works_when_both_sides_spread_alike():
    assert stats.holm([0.6, 0.7, 0.8]) == [1.0, 1.0, 1.0]
    difference, t, df, p = stats.welch_test([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])  # equal variances, not zero
    assert difference == -1.0 and p == pytest.approx(scipy_stats.ttest_ind([1, 2, 3], [2, 3, 4], equal_var=False).pvalue)


def test_an_untestable_pair_has_no_t_and_the_sign_flip_test_takes_twenty_pairs():
    assert math.isnan(stats.paired_difference([99.6], [99.5])["t"])
    assert stats.sign_flip_p([0.1] * 20) == pytest.approx(2 / 2 ** 20)


def committed_markdown(call):
    """Every markdown output of the committed notebook's cell that calls `call`, joined."""
    notebook = json.loads((IMAGES.parent / "experiments.ipynb").read_text())
    [cell] = [c for c in notebook["cells"] if call in "".join(c["source"])]
    return "\n".join("".join(o["data"]["text/markdown"]) for o in cell["outputs"] if "text/markdown" in o.get("data", {}))


def test_the_committed_findings_are_what_findings_makes_of_the_committed_results():
    """The notebook's closing findings, every line, recomputed from the JSON its execution wrote beside them."""
    committed = committed_markdown("display(Markdown(findings.findings(")
    load = {name: store.load_histories(IMAGES / f"{name}.json") for name in (
        "history", "regularizer_history", "micro_batch_sweep", "regularizer_report", "lr_range", "group_sweep",
        "activation_statistics", "per_image_accuracy", "normalizations", "budget_history")}
    computed = findings.findings(  # 4: the notebook's GN_GROUPS
        load["history"], load["regularizer_history"], load["micro_batch_sweep"], load["regularizer_report"],
        load["lr_range"], load["group_sweep"], 4, load["activation_statistics"], load["per_image_accuracy"],
        load["normalizations"], load["budget_history"])
    assert computed.splitlines() == committed.splitlines()


def test_every_table_the_notebook_shows_is_what_probes_makes_of_the_committed_results():
    """The committed notebook's tables of layers, activations, penalties, range tests and group counts, each remade
    from the JSON (or, for the layers, the nets) the execution that drew them wrote."""
    load = lambda name: store.load_histories(IMAGES / f"{name}.json")  # noqa: E731
    nets = {"BN + L1": Net("bn"), "LN": Net("ln"), "GN": Net("gn", groups=4)}  # the notebook's CONFIGS, GN_GROUPS 4
    tables = {"probes.layer_table(": probes.layer_table(nets),
              "probes.activation_table(": probes.activation_table(load("activation_statistics")),
              "probes.regularizer_table(": probes.regularizer_table(load("regularizer_report")),
              "probes.divergence_table(": probes.divergence_table(load("lr_range")),
              "probes.group_table(": probes.group_table(load("group_sweep"), 4)}
    for call, table in tables.items():
        assert table.count("\n") >= 3 and table in committed_markdown(call), call


def test_the_answer_ranks_by_mean_accuracy_and_names_every_seed_count():
    main = histories_of("BN", [99.1, 99.2, 99.15]) + histories_of("GN", [99.3, 99.35, 99.32]) \
        + histories_of("LN", [99.5, 99.65])
    assert findings.answer(main).startswith(
        "Final test accuracy, mean ± sd over 2/3 seeds: LN 99.58% ± 0.11, GN 99.32% ± 0.03, BN 99.15% ± 0.05. Paired "
        "by seed (95% interval; Holm-corrected paired t-test; margin ±0.2): BN − GN -0.17 [-0.24, -0.11] points, "
        "different: GN higher; within or beyond ±0.2 undecided; BN − LN -0.43 [-0.74, -0.11] points, undecided; GN − LN ")


def test_a_sweep_sentence_groups_undecided_and_untestable_sizes_and_counts_what_diverged_or_fails_at_test():
    """Micro-batch 1 diverged on every seed, 2 on one (and fails at test on the others), 4 fails at test on one seed,
    8 spreads too widely to decide, 32 has one seed: what the sentence must say of each."""
    reference = [99.30, 99.40, 99.35]
    sweep = [sweep_run(128, seed, acc) for seed, acc in enumerate(reference, 1)]
    sweep += [sweep_run(1, seed, 10.0) for seed in (1, 2, 3)]
    sweep += [sweep_run(2, 1, 10.0), sweep_run(2, 2, 20.0, 97.0), sweep_run(2, 3, 30.0, 97.5)]
    sweep += [sweep_run(4, 1, 40.0, 98.0), sweep_run(4, 2, 99.0), sweep_run(4, 3, 99.1)]
    sweep += [sweep_run(8, seed, acc + gap) for seed, acc, gap in zip((1, 2, 3), reference, (0.4, -0.35, 0.2))]
    sweep += [sweep_run(32, 1, 99.2)]
    text = findings.findings(histories_of("BN", [99.5, 99.6]), sweep=sweep)
    assert text.splitlines()[1] == (
        "- **Micro-batch sweep, BN**: micro-batch 1 diverged, 128 99.35% ± 0.05; each size against 128, paired by seed "
        "(points): undecided: micro-batch 2 (-74.38 [-138.22, -10.53]), micro-batch 4 (-19.98 [-104.57, +64.60]), "
        "micro-batch 8 (+0.08 [-0.88, +1.05]); untestable: micro-batch 32 (-0.10); below 50% at test though training "
        "reached 97.0-98.0% (running train accuracy): 2 of 2 at micro-batch 2, 1 of 3 at micro-batch 4; 4 run(s) "
        "diverged.")


def test_the_edges_of_divergence_seed_pairing_and_summaries():
    """50% running train accuracy is trained (below it is diverged), every diverged run of a size is counted, no
    histories have no common seeds, pairing reads the key it is given, an empty summary names itself."""
    assert not stats.diverged(sweep_run(8, 1, 50.0)) and stats.diverged(sweep_run(8, 1, 49.99))
    runs = [sweep_run(8, seed, 10.0) for seed in (1, 2)] + [sweep_run(8, 3, 99.0)]
    assert stats.sweep_points(runs) == ({"BN": {8: [99.0]}}, {("BN", 8): 2})
    assert stats.common_seeds([]) == [] and stats.paired_by_seed([]) == {}
    runs = histories_of("A", [99.0, 99.2]) + histories_of("B", [99.1, 99.3])
    assert stats.paired_by_seed(runs, "train_loss") == {"A": [0.25, 0.25], "B": [0.25, 0.25]}
    assert stats.paired_by_seed(runs) == {"A": [99.0, 99.2], "B": [99.1, 99.3]}
    with pytest.raises(ValueError, match="^summarize needs at least one value$"):
        stats.summarize([])
