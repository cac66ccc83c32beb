"""Seed statistics and their tables: summaries with 95% intervals, and the one analysis every comparison of the study
gets, stated before the numbers (ANALYSIS): runs of one seed are paired, the paired t-test decides with Holm's
correction within a family of comparisons, an exact sign-flip permutation test and Welch's test stand beside it, and
an equivalence margin fixed in advance sorts the verdicts (VERDICTS)."""
import itertools
import math
import statistics

from scipy import stats

ALPHA = 0.05  # family-wise error rate of each family of comparisons (Holm)
MARGIN = 0.2  # points of test accuracy (20 of the 10,000 test digits): the equivalence margin, fixed in advance
ANALYSIS = (
    "Runs that share a seed share their batch order, augmentation and dropout masks (the normalized nets also their "
    "initial conv weights), so every comparison is paired by seed: the mean difference a - b with its 95% t-interval. "
    f"Three paired t-tests decide, each Holm-corrected within the comparison's family at a family-wise {ALPHA:.0%}: "
    f"the difference is not 0; it lies inside ±{MARGIN} points (two one-sided tests); it lies beyond ±{MARGIN} on the "
    "side its mean fell (p doubled, the side being picked after looking). Verdicts: **different, beyond** or "
    "**within the margin** (the first test and the third or the second); **different** (neither settles its size); "
    "**equivalent within the margin** (not different, and inside); **undecided**. The families: the main study's "
    "three pairs; the penalties against plain BN; each micro-batch against the largest; the normalizations and the "
    "control at the study's length; each training budget; each group count against the study's. A pair is tested in "
    "one family only. An exact sign-flip permutation test (with n pairs its smallest p is 2 / 2^n, 0.002 for 10) and "
    f"Welch's unpaired test stand beside, deciding nothing. The margin, {MARGIN} points or {MARGIN * 100:.0f} test "
    "digits, is about three times the sampling error of one accuracy near 99.5% on 10,000 test digits (sd 0.07 "
    "points): a smaller gap would not reliably survive a new test set, and would make no one choose one normalization "
    "over another on MNIST.")
WHEN_FIXED = (  # said once, beside the ANALYSIS
    "When it was fixed: the paired test, Holm and the margin after seeds 1-5 of the main study had been seen, before "
    "seeds 6-10 trained; Holm on the equivalence and margin tests after every other run had been seen, before the "
    "control and the training budgets trained.")


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


def mean_sd(values, unit="%", digits=2):
    """ "mean ± sd" of `values` for tables and findings; the mean alone for a single value."""
    s = summarize(values)
    return f"{s['mean']:.{digits}f}{unit}" + ("" if s["n"] == 1 else f" ± {s['std']:.{digits}f}")


def _mean_std_ci(values, unit="%", digits=2):
    s = summarize(values)
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}{unit} (1 seed: no spread)"
    return (f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}{unit} "
            f"[{s['mean'] - s['ci95']:.{digits}f}, {s['mean'] + s['ci95']:.{digits}f}]")


def seed_table(histories):
    """Markdown: per configuration, the seeds, the final epoch's test accuracy (the result: mean ± sd [95% interval])
    and test loss. No best epoch (it would be picked on the test set) and no wall-clock time (a shared machine's)."""
    rows = ["| configuration | seeds | final test acc: mean ± sd [95% CI] | final test loss (mean) |",
            "| --- | --- | --- | --- |"]
    for name, runs in by_name(histories).items():
        rows.append(f"| {name} | {len(runs)} | {_mean_std_ci([h['test_acc'][-1] for h in runs])} "
                    f"| {summarize([h['test_loss'][-1] for h in runs])['mean']:.4f} |")
    return "\n".join(rows)


def sign_flip_p(differences):
    """Exact two-sided p of the sign-flip permutation test of paired differences: the share of the 2^n ways to flip
    their signs whose sum is at least as far from 0 as the observed one. Exact, so n is at most 20."""
    d = [float(x) for x in differences]
    if not 1 <= len(d) <= 20:
        raise ValueError(f"sign_flip_p enumerates 2^n sign flips; it takes 1 to 20 differences, got {len(d)}")
    observed = abs(sum(d)) - 1e-9 * max(1.0, sum(map(abs, d)))  # a flip equal to the observed sum counts
    extreme = sum(abs(sum(s * x for s, x in zip(signs, d))) >= observed
                  for signs in itertools.product((1, -1), repeat=len(d)))
    return extreme / 2 ** len(d)


def holm(p_values):
    """Holm's step-down adjustment of a family's p-values (same order; NaN stays NaN and does not count)."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted, running = [math.nan] * len(p_values), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def paired_difference(a, b):
    """a[i] - b[i] over pairs that share a seed: n, mean difference, its 95% and 90% t-intervals, the paired t-test's
    t, df and two-sided p, the exact sign-flip p, and Welch's p on the same values. NaN where there is no spread."""
    if len(a) != len(b):
        raise ValueError(f"a paired comparison needs one value per seed on each side, got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    s = summarize(d)
    result = {"n": s["n"], "difference": s["mean"], "ci95": (math.nan, math.nan), "ci90": (math.nan, math.nan),
              "t": math.nan, "df": s["n"] - 1, "p": math.nan, "p_sign_flip": sign_flip_p(d),
              "p_welch": welch_test(a, b)[3]}
    if s["n"] >= 2 and s["std"] > 0:
        se = s["std"] / math.sqrt(s["n"])
        t95, t90 = (float(stats.t.ppf(q, s["n"] - 1)) for q in (0.975, 0.95))
        result.update(ci95=(s["mean"] - t95 * se, s["mean"] + t95 * se), ci90=(s["mean"] - t90 * se, s["mean"] + t90 * se),
                      t=s["mean"] / se, p=2 * float(stats.t.sf(abs(s["mean"] / se), s["n"] - 1)))
    return result


def margin_tests(result, margin):
    """One-sided p-values of a paired difference against the margin: "p_equivalence", the two one-sided tests' p that
    the true difference lies inside ±margin (TOST: the larger of the two), and "p_beyond", the p that it lies beyond
    ±margin on the side the mean fell (doubled: that side was picked after looking). NaN where there is no spread."""
    d, n = result["difference"], result["n"]
    low, high = result["ci95"]
    if math.isnan(low):
        return {"p_equivalence": math.nan, "p_beyond": math.nan}
    se = (high - low) / (2 * float(stats.t.ppf(0.975, n - 1)))
    t_dist = stats.t(n - 1)
    return {"p_equivalence": float(max(t_dist.sf((d + margin) / se), t_dist.cdf((d - margin) / se))),
            "p_beyond": float(min(1.0, 2 * t_dist.sf((abs(d) - margin) / se)))}


VERDICTS = {  # verdict: how the tables say it (the higher side is named where there is a difference)
    "beyond": "**different**, beyond ±{m}: {higher} higher",
    "within": "**different**, within ±{m}: {higher} higher",
    "different": "**different**: {higher} higher; within or beyond ±{m} undecided",
    "equivalent": "equivalent within ±{m}",
    "undecided": "undecided",
    "untestable": "untestable (needs 2+ paired seeds with some spread)",
}


def compare_family(values, pairs=None, alpha=ALPHA, margin=MARGIN):
    """The ANALYSIS applied to one family: `values` is {name: {seed: value}}, `pairs` the (a, b) compared (default:
    every pair, in order). Each result holds a, b, the seeds paired (those both have), paired_difference's fields,
    margin_tests' p-values, each Holm-corrected within the family (p_holm, p_equivalence_holm, p_beyond_holm), and
    the verdict, a key of VERDICTS."""
    names = list(values)
    pairs = pairs if pairs is not None else [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    results = []
    for a, b in pairs:
        seeds = sorted(set(values[a]) & set(values[b]))
        result = {"a": a, "b": b, "seeds": seeds, "margin": margin,
                  **paired_difference([values[a][s] for s in seeds], [values[b][s] for s in seeds])}
        results.append({**result, **margin_tests(result, margin)})
    for key, corrected in (("p", "p_holm"), ("p_equivalence", "p_equivalence_holm"), ("p_beyond", "p_beyond_holm")):
        for result, adjusted in zip(results, holm([r[key] for r in results])):
            result[corrected] = adjusted
    for r in results:
        different, equivalent = r["p_holm"] < alpha, r["p_equivalence_holm"] < alpha
        r["verdict"] = ("untestable" if math.isnan(r["p_holm"]) else "beyond" if different and r["p_beyond_holm"] < alpha
                        else "within" if different and equivalent else "different" if different
                        else "equivalent" if equivalent else "undecided")
    return results


def verdict_words(result):
    """The verdict as the tables and the answer say it, naming the higher side of a difference."""
    higher = result["a"] if result["difference"] > 0 else result["b"]
    return VERDICTS[result["verdict"]].format(m=f"{result['margin']:g}", higher=higher)


def interval(result, digits=2):
    """The difference with its 95% interval, "+0.10 [+0.04, +0.16]"; the difference alone when there is none."""
    low, high = result["ci95"]
    text = f"{result['difference']:+.{digits}f}"
    return text if math.isnan(low) else text + f" [{low:+.{digits}f}, {high:+.{digits}f}]"


def family_table(results, unit="points"):
    """Markdown: one row per comparison of a family, every column of the ANALYSIS."""
    rows = [f"| comparison | pairs | a - b ({unit}) [95% CI] | 90% CI | paired t p (Holm) | sign-flip p | Welch p "
            "| verdict |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        low, high = r["ci90"]
        ninety = "-" if math.isnan(low) else f"[{low:+.2f}, {high:+.2f}]"
        rows.append(f"| {r['a']} vs {r['b']} | {r['n']} | {interval(r)} | {ninety} | {_p(r['p'])} ({_p(r['p_holm'])}) "
                    f"| {_p(r['p_sign_flip'])} | {_p(r['p_welch'])} | {verdict_words(r)} |")
    return "\n".join(rows)


def _p(p):
    return "-" if math.isnan(p) else f"{p:.2g}"


def final_test_accuracies(histories):
    """{configuration name: [final test accuracy of each seed]}."""
    return {name: [h["test_acc"][-1] for h in runs] for name, runs in by_name(histories).items()}


def finals_by_seed(histories, key="test_acc"):
    """{configuration name: {seed: final `key`}}: what compare_family pairs."""
    return {name: {h["seed"]: h[key][-1] for h in runs} for name, runs in by_name(histories).items()}


def common_seeds(histories):
    """The seeds every configuration in `histories` has, in order."""
    groups = [{h["seed"] for h in runs} for runs in by_name(histories).values()]
    return sorted(set.intersection(*groups)) if groups else []


def paired_by_seed(histories, key="test_acc"):
    """{name: [final `key` per seed]} over common_seeds, in seed order."""
    seeds = common_seeds(histories)
    return {name: [values[seed] for seed in seeds] for name, values in finals_by_seed(histories, key).items()}


def per_seed_table(histories):
    """Markdown: final test accuracy of every run, a row per seed and a column per configuration (the pairs)."""
    paired = paired_by_seed(histories)
    rows = ["| seed | " + " | ".join(paired) + " |", "|" + " --- |" * (len(paired) + 1)]
    for i, seed in enumerate(common_seeds(histories)):
        rows.append(f"| {seed} | " + " | ".join(f"{values[i]:.2f}%" for values in paired.values()) + " |")
    return "\n".join(rows)


def comparison_table(histories):
    """Markdown: every pair of configurations, final test accuracy, by the ANALYSIS (one family)."""
    return family_table(compare_family(finals_by_seed(histories)))


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
    """Markdown: final test accuracy mean ± sd over seeds, one row per micro-batch size, one column per normalization;
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


def sweep_comparisons(histories):
    """The micro-batch family of the ANALYSIS: for each normalization swept over several sizes, each size against the
    largest, paired by seed; a run that diverged leaves its pair out (it is counted in the table)."""
    points = {}
    for h in histories:
        if not diverged(h):
            points.setdefault(h["name"], {}).setdefault(h["micro_batch_size"], {})[h["seed"]] = h["test_acc"][-1]
    results = {}
    for name, by_size in points.items():
        if len(by_size) > 1:
            sizes = sorted(by_size)
            values = {f"micro-batch {size}": by_size[size] for size in sizes}
            results[name] = compare_family(values, [(f"micro-batch {size}", f"micro-batch {sizes[-1]}")
                                                    for size in sizes[:-1]])
    return results
