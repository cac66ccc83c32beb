"""budget.py: the control's learning rate is the rule's pick on held-out images, each budget is its own family, and
what a reader is told a budget reaches is its seeds' mean."""
import pytest

import budget
import plots
import stats


def run(name, seed, epochs, final, max_lr=0.1, loss=0.05):
    return {"name": name, "seed": seed, "max_lr": max_lr, "epoch": list(range(1, epochs + 1)),
            "test_acc": [90.0] * (epochs - 1) + [final], "test_loss": [0.3] * (epochs - 1) + [loss]}


def test_the_control_s_learning_rate_is_the_one_with_the_best_final_validation_accuracy_the_lower_on_a_tie():
    grid = [run("No norm", 1, 8, acc, lr) for lr, acc in ((0.01, 99.1), (0.05, 99.3), (0.1, 99.3), (0.2, 98.0))]
    assert budget.chosen_lr(grid) == 0.05
    assert budget.chosen_lr(grid[2:]) == 0.1  # the last epoch decides, not the best one
    table = budget.lr_grid_table(grid).splitlines()
    assert [row.split(" | ")[0] for row in table[2:]] == ["| 0.01", "| 0.05", "| 0.1", "| 0.2"]
    assert "**chosen**" in table[3] and sum("chosen" in row for row in table) == 1
    with pytest.raises(ValueError, match="at least one learning rate"):
        budget.chosen_lr([])


def test_the_budget_that_reaches_an_accuracy_is_the_shortest_whose_seed_mean_does():
    by_budget = {1: {1: 98.0, 2: 99.3}, 2: {1: 99.0, 2: 99.1}, 4: {1: 99.4, 2: 99.5}}
    assert budget.epochs_to_reach(by_budget, 99.0) == 2  # seed 2 reached it at 1 epoch, the mean did not
    assert budget.epochs_to_reach(by_budget, 99.45) == 4
    assert budget.epochs_to_reach(by_budget, 99.6) is None


def test_each_budget_is_a_family_of_its_own_and_a_pair_decided_elsewhere_is_not_tested_again():
    noise = {1: 0.03, 2: -0.05, 3: 0.08, 4: 0.0, 5: -0.02}
    runs = [run(name, seed, epochs, base + gap + noise[seed] * k)
            for epochs, base in ((1, 98.0), (2, 99.0)) for seed in range(1, 6)
            for name, gap, k in (("BN", 0.5, 1), ("LN", 0.0, -1), ("No norm", -0.3, 2))]
    families = budget.budget_comparisons(runs)
    assert list(families) == [1, 2]
    finals = budget.finals_by_budget(runs)
    for epochs, results in families.items():
        alone = stats.compare_family({name: by_budget[epochs] for name, by_budget in finals.items()})
        assert [r["p_holm"] for r in results] == pytest.approx([r["p_holm"] for r in alone])
        assert len(results) == 3 and all(r["n"] == 5 for r in results)
    assert budget.budget_comparisons(runs, skip=[2]).keys() == {1}
    assert budget.untested_pairs(["BN", "LN", "GN"], tested=[("GN", "LN")]) == [("BN", "LN"), ("BN", "GN")]
    main = [run(name, seed, 20, 99.0 + seed / 10) for name in ("BN + L1", "LN", "GN") for seed in (1, 2, 3)]
    norm = [run(name, seed, 20, 99.0 + seed / 10) for name in ("BN", "LN", "GN") for seed in (1, 2, 3)]
    assert [(r["a"], r["b"]) for r in budget.normalization_comparisons(norm, main)] == [("BN", "LN"), ("BN", "GN")]


def test_the_budget_table_and_figure_show_every_seed_and_the_mean_it_reaches():
    runs = [run(name, seed, epochs, acc + seed / 10)
            for name, accs in (("BN", (99.0, 99.3)), ("No norm", (97.9, 99.0))) for seed in (1, 2)
            for epochs, acc in zip((1, 20), accs)]
    rows = budget.budget_table(runs).splitlines()
    assert rows[0] == "| network | 1 epoch | 20 epochs | epochs to 99.0% | epochs to 99.4% |"
    assert rows[2] == "| BN | 99.15% ± 0.07 (2) | 99.45% ± 0.07 (2) | 1 | 20 |"
    assert rows[3] == "| No norm | 98.05% ± 0.07 (2) | 99.15% ± 0.07 (2) | 20 | more than 20 |"
    fig = plots.plot_budget(runs)
    ax = fig.axes[0]
    dots = [line for line in ax.lines if line.get_linestyle() == "None"]
    assert sorted(y for line in dots for y in line.get_ydata()) == sorted(r["test_acc"][-1] for r in runs)
    means = {line.get_label(): list(line.get_ydata()) for line in ax.lines if line.get_label() in ("BN", "No norm")}
    assert means == {"BN": pytest.approx([99.15, 99.45]), "No norm": pytest.approx([98.05, 99.15])}
    plots.plt.close(fig)


def test_a_seed_far_below_the_others_stays_visible_at_the_figure_s_bottom_edge_with_its_value():
    runs = [run("No norm", seed, 1, acc) for seed, acc in ((1, 77.79), (2, 96.0), (3, 97.0))]
    fig = plots.plot_budget(runs)
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == 90  # the scale is spent on the rest ...
    assert [t.get_text() for t in ax.texts] == ["77.8%"]  # ... and the outlier is written where it is marked
    assert [line.get_marker() for line in ax.lines].count("v") == 1
    plots.plt.close(fig)
