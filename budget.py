"""What normalization buys: a fair net without it (its learning rate chosen on held-out training images, never on the
test set), the normalized nets against it paired by seed, and the training budget: final test accuracy after 1, 2, 4,
8 and 20 epochs, each budget its own one-cycle schedule."""
import statistics

from stats import compare_family, finals_by_seed, mean_sd

THRESHOLDS = (99.0, 99.4)  # test accuracies (%) whose budget the study reports: "epochs to reach"


def chosen_lr(histories):
    """The peak learning rate whose run ends with the highest validation accuracy (a tie: the lower rate): the rule
    that picks the control's learning rate, fixed before its runs trained. `histories` are the grid's runs, tested on
    held-out training images."""
    if not histories:
        raise ValueError("chosen_lr needs the validation runs of at least one learning rate")
    return max(histories, key=lambda h: (h["test_acc"][-1], -h["max_lr"]))["max_lr"]


def lr_grid_table(histories):
    """Markdown: each peak learning rate of the grid, its final validation accuracy and loss, and the chosen one."""
    chosen = chosen_lr(histories)
    rows = ["| peak lr | final validation acc | final validation loss | |", "| --- | --- | --- | --- |"]
    for h in sorted(histories, key=lambda h: h["max_lr"]):
        rows.append(f"| {h['max_lr']:g} | {h['test_acc'][-1]:.2f}% | {h['test_loss'][-1]:.4f} | "
                    + ("**chosen**" if h["max_lr"] == chosen else "") + " |")
    return "\n".join(rows)


def finals_by_budget(histories):
    """{name: {epochs: {seed: final test accuracy}}}: each run's budget is its length."""
    finals = {}
    for h in histories:
        finals.setdefault(h["name"], {}).setdefault(h["epoch"][-1], {})[h["seed"]] = h["test_acc"][-1]
    return finals


def epochs_to_reach(by_budget, threshold):
    """The shortest budget whose mean final test accuracy over seeds reaches `threshold`; None when none does."""
    return next((epochs for epochs in sorted(by_budget) if statistics.fmean(by_budget[epochs].values()) >= threshold),
                None)


def budget_table(histories, thresholds=THRESHOLDS):
    """Markdown: final test accuracy mean ± sd (seeds) per network and budget, and the shortest budget whose mean
    reaches each threshold."""
    finals = finals_by_budget(histories)
    budgets = sorted({epochs for by_budget in finals.values() for epochs in by_budget})
    rows = ["| network | " + " | ".join(f"{e} epoch{'s' * (e > 1)}" for e in budgets) + " | "
            + " | ".join(f"epochs to {t:.1f}%" for t in thresholds) + " |",
            "|" + " --- |" * (len(budgets) + 1 + len(thresholds))]
    for name, by_budget in finals.items():
        cells = [f"{mean_sd(list(by_budget[e].values()))} ({len(by_budget[e])})" if e in by_budget else "-"
                 for e in budgets]
        reach = [epochs_to_reach(by_budget, t) for t in thresholds]
        rows.append(f"| {name} | " + " | ".join(cells) + " | "
                    + " | ".join(str(e) if e else f"more than {max(by_budget)}" for e in reach) + " |")
    return "\n".join(rows)


def untested_pairs(names, tested):
    """Every pair of `names`, in order, but those in `tested` (pairs another family of the study already decides: a
    pair is tested once)."""
    done = {frozenset(pair) for pair in tested}
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if frozenset((a, b)) not in done]


def normalization_comparisons(norm_histories, main_histories):
    """The normalization family of the ANALYSIS at the study's length: every pair of `norm_histories` (BN, LN, GN and
    the control) but those the main study's family (`main_histories`) already decides, paired by seed."""
    finals = finals_by_seed(norm_histories)
    tested = [(r["a"], r["b"]) for r in compare_family(finals_by_seed(main_histories))]
    return compare_family(finals, untested_pairs(list(finals), tested))


def budget_comparisons(histories, skip=()):
    """One family of the ANALYSIS per budget (but those in `skip`, decided elsewhere): every pair of networks trained
    for that many epochs, paired by seed. {epochs: results}."""
    finals = finals_by_budget(histories)
    budgets = sorted({epochs for by_budget in finals.values() for epochs in by_budget} - set(skip))
    return {epochs: compare_family({name: b[epochs] for name, b in finals.items() if epochs in b})
            for epochs in budgets}

