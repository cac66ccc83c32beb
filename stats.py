"""Seed statistics and their tables: summaries with 95% intervals, Welch's and the paired t-test, Bonferroni
comparisons, the per-seed and micro-batch sweep tables."""
import math
import statistics

from scipy import stats


def by_name(histories):
    """Histories grouped by configuration name, in first-seen order: {name: [history, ...]}."""
    groups = {}
    for h in histories:
        groups.setdefault(h["name"], []).append(h)
    return groups


def summarize(values):
    """n, mean, sample standard deviation and the half-width of the 95% Student-t interval of the mean.

    With a single value the spread is unknown: std and ci95 are NaN, never a misleading 0.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summarize needs at least one value")
    n, mean = len(values), statistics.fmean(values)
    if n == 1:
        return {"n": 1, "mean": mean, "std": math.nan, "ci95": math.nan}
    std = statistics.stdev(values)
    return {"n": n, "mean": mean, "std": std, "ci95": float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)}


def welch_test(a, b):
    """Welch's t-test of mean(a) - mean(b), not assuming equal variances: (difference, t, df, two-sided p).

    NaN statistics when either side has fewer than two values or both have zero spread.
    """
    sa, sb = summarize(a), summarize(b)
    difference = sa["mean"] - sb["mean"]
    va, vb = sa["std"] ** 2 / sa["n"], sb["std"] ** 2 / sb["n"]
    if math.isnan(va + vb) or va + vb == 0:
        return difference, math.nan, math.nan, math.nan
    t = difference / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (sa["n"] - 1) + vb ** 2 / (sb["n"] - 1))
    return difference, t, df, 2 * float(stats.t.sf(abs(t), df))


def paired_test(a, b):
    """Paired t-test of the differences a[i] - b[i] (run i of each side shares its seed): (mean difference, t, df,
    two-sided p).

    More powerful than Welch's test when runs of the same seed are alike, because the seed-to-seed variation both
    sides share cancels in the differences. NaN statistics with fewer than two pairs or differences without spread.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_test needs one value per seed on each side, got {len(a)} and {len(b)} values")
    d = summarize([x - y for x, y in zip(a, b)])
    if d["n"] < 2 or d["std"] == 0:
        return d["mean"], math.nan, math.nan, math.nan
    t = d["mean"] / (d["std"] / math.sqrt(d["n"]))
    return d["mean"], t, d["n"] - 1, 2 * float(stats.t.sf(abs(t), d["n"] - 1))


def final_and_best(history, key="test_acc"):
    """The last epoch's value and the best epoch's value of `key` (best picked after the fact, so optimistic)."""
    return history[key][-1], max(history[key])


def mean_sd(values, unit="%", digits=2):
    """ "mean +- sd" of `values` for tables and findings; the mean alone for a single value."""
    s = summarize(values)
    return f"{s['mean']:.{digits}f}{unit}" + ("" if s["n"] == 1 else f" +- {s['std']:.{digits}f}")


def _mean_std_ci(values, unit="%", digits=2):
    s = summarize(values)
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}{unit} (1 seed: no spread)"
    return (f"{s['mean']:.{digits}f} +- {s['std']:.{digits}f}{unit} "
            f"[{s['mean'] - s['ci95']:.{digits}f}, {s['mean'] + s['ci95']:.{digits}f}]")


def seed_table(histories):
    """Markdown: per configuration, the number of seeds and mean +- sd [95% interval] of final and best test
    accuracy."""
    rows = ["| configuration | seeds | final test acc: mean +- sd [95% CI] | best test acc: mean +- sd [95% CI] "
            "| final test loss (mean) | time per run (mean) |", "| --- | --- | --- | --- | --- | --- |"]
    for name, runs in by_name(histories).items():
        finals, bests = zip(*(final_and_best(h) for h in runs))
        rows.append(f"| {name} | {len(runs)} | {_mean_std_ci(finals)} | {_mean_std_ci(bests)} "
                    f"| {summarize([h['test_loss'][-1] for h in runs])['mean']:.4f} "
                    f"| {summarize([sum(h['seconds']) for h in runs])['mean']:.0f} s |")
    return "\n".join(rows)


def compare(groups, alpha=0.05, test=welch_test):
    """Every pair of {name: [values]}: `test` (Welch's, or paired_test for lists in the same seed order), and whether
    the difference is real at Bonferroni's threshold.

    Returns a list of dicts with a, b, difference (mean a - mean b), t, df, p, threshold = alpha / number of pairs,
    and verdict: "real" (p < threshold), "noise" (within the seed-to-seed noise) or "untestable" (too few seeds).
    """
    names = list(groups)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    threshold = alpha / max(1, len(pairs))
    results = []
    for a, b in pairs:
        difference, t, df, p = test(groups[a], groups[b])
        verdict = "untestable" if math.isnan(p) else "real" if p < threshold else "noise"
        results.append({"a": a, "b": b, "difference": difference, "t": t, "df": df, "p": p,
                        "threshold": threshold, "verdict": verdict})
    return results


def final_test_accuracies(histories):
    """{configuration name: [final test accuracy of each seed]}."""
    return {name: [h["test_acc"][-1] for h in runs] for name, runs in by_name(histories).items()}


def common_seeds(histories):
    """The seeds every configuration in `histories` has, in order: the pairs of the paired test."""
    groups = [{h["seed"] for h in runs} for runs in by_name(histories).values()]
    return sorted(set.intersection(*groups)) if groups else []


def paired_by_seed(histories, key="test_acc"):
    """{name: [final `key` per seed]} over common_seeds, in seed order: the paired test's input."""
    seeds = common_seeds(histories)
    by_seed = {name: {h["seed"]: h[key][-1] for h in runs} for name, runs in by_name(histories).items()}
    return {name: [values[seed] for seed in seeds] for name, values in by_seed.items()}


def per_seed_table(histories):
    """Markdown: final test accuracy of every run, a row per seed and a column per configuration (the pairs)."""
    paired = paired_by_seed(histories)
    rows = ["| seed | " + " | ".join(paired) + " |", "|" + " --- |" * (len(paired) + 1)]
    for i, seed in enumerate(common_seeds(histories)):
        rows.append(f"| {seed} | " + " | ".join(f"{values[i]:.2f}%" for values in paired.values()) + " |")
    return "\n".join(rows)


def comparison_table(histories, alpha=0.05):
    """Markdown: every pair of configurations, final test accuracy compared with Welch's t-test and, over the seeds
    both have, with the paired t-test on the per-seed differences.

    A difference is called real only when p < alpha / (number of pairs) (Bonferroni), otherwise it is
    within the seed-to-seed noise.
    """
    results = compare(final_test_accuracies(histories), alpha)
    paired = compare(paired_by_seed(histories), alpha, paired_test)
    threshold = results[0]["threshold"] if results else alpha
    rows = [f"| comparison (final test acc) | difference | Welch t | df | p | verdict (real if p < {threshold:.3g}) "
            "| paired t | df | p | verdict, paired |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r, q in zip(results, paired):
        rows.append(f"| {r['a']} vs {r['b']} | {r['difference']:+.3f} points | {r['t']:.2f} | {r['df']:.1f} "
                    f"| {r['p']:.3g} | {_verdict(r)} | {q['t']:.2f} | {q['df']:.0f} | {q['p']:.3g} | {_verdict(q)} |")
    return "\n".join(rows)


def _verdict(result):
    if result["verdict"] == "untestable":
        return "untestable: needs 2+ seeds with some spread on each side"
    if result["verdict"] == "noise":
        return "within seed noise"
    return f"**real**: {result['a'] if result['difference'] > 0 else result['b']} higher"


def diverged(history):
    """True for a run whose training failed: its last epoch's training loss is not finite or its running training
    accuracy is below 50%."""
    return not math.isfinite(history["train_loss"][-1]) or history["train_acc"][-1] < 50


def fails_at_test(history):
    """True for a run that trained (did not diverge) but whose final model scores below 50% on the test set in eval
    mode: its weights learned, what it uses at test time did not carry over (BatchNorm's running averages, for one)."""
    return not diverged(history) and not history["test_acc"][-1] >= 50


def sweep_points(histories):
    """{name: {micro-batch size: [final test accuracy of each seed that did not diverge]}} and the diverged count per
    (name, size). A run that trained but fails at test is a result, not a failure of the run: it is in the list."""
    points, failed = {}, {}
    for h in histories:
        size = h["micro_batch_size"]
        points.setdefault(h["name"], {}).setdefault(size, [])
        if diverged(h):
            failed[h["name"], size] = failed.get((h["name"], size), 0) + 1
        else:
            points[h["name"]][size].append(h["test_acc"][-1])
    return points, failed


def count_failing_at_test(histories):
    """{(name, micro-batch size): how many of its runs trained but score below 50% at test}."""
    counts = {}
    for h in filter(fails_at_test, histories):
        counts[h["name"], h["micro_batch_size"]] = counts.get((h["name"], h["micro_batch_size"]), 0) + 1
    return counts


def sweep_table(histories):
    """Markdown: final test accuracy mean +- sd over seeds, one row per micro-batch size, one column per normalization;
    diverged runs are counted, not averaged in; runs that trained but score below 50% at test are averaged in and
    counted."""
    points, failed = sweep_points(histories)
    at_test = count_failing_at_test(histories)
    names = list(points)
    sizes = sorted({size for by_size in points.values() for size in by_size})
    rows = ["| micro-batch | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)]
    for size in sizes:
        cells = []
        for name in names:
            values, lost, low = points[name].get(size, []), failed.get((name, size), 0), at_test.get((name, size), 0)
            cell = mean_sd(values) if values else "-"
            cell += f" ({lost} of {lost + len(values)} diverged)" if lost else ""
            cells.append(cell + (f" ({low} of {lost + len(values)} below 50% at test)" if low else ""))
        rows.append(f"| {size} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
