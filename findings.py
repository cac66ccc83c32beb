"""The study's closing findings: Markdown bullets computed from the histories, the regularizer report, the range
tests, the group sweep and the activation statistics, never typed in."""
import statistics

from probes import epochs_label, finals_by_group, pooled, range_summary, value_range
from stats import (by_name, compare, count_failing_at_test, fails_at_test, final_test_accuracies, mean_sd, paired_by_seed,
                   paired_test, sweep_points)


def _pair_sentence(result, paired=None, unit="points"):
    words = {"real": "a real difference", "noise": "within seed noise",
             "untestable": "untestable with these seeds"}
    text = f"{result['a']} vs {result['b']}: {result['difference']:+.2f} {unit} (Welch p = {result['p']:.2g}"
    if paired is None:
        return text + f"), {words[result['verdict']]}"
    return (text + f", paired p = {paired['p']:.2g}), {words[result['verdict']]}"
            + ("" if paired["verdict"] == result["verdict"] else f" by Welch, {words[paired['verdict']]} paired"))


def _range_sentence(name, curves):
    summaries = [range_summary(c) for c in curves]
    lowest = statistics.median(r["lowest"] for r in summaries)
    if not any(r["learned"] for r in summaries):
        return f"{name} never learned (lowest smoothed loss {lowest:.2f}; chance is ln 10 = 2.30)"
    return f"{name} reached a loss of {lowest:.2f} and diverged at lr {statistics.median(r['diverged_lr'] for r in summaries):.3g}"


def _sweep_sentence(name, by_size, sweep, failed, at_test, alpha):
    """One normalization of the micro-batch sweep: its smallest and largest size, which sizes differ from the largest
    beyond the seed noise (Welch, Bonferroni over the sizes compared), and the runs that diverged or fail at test."""
    sizes = sorted(by_size)
    ends = sizes[:1] if len(sizes) == 1 else [sizes[0], sizes[-1]]
    text = f"- **Micro-batch sweep, {name}**: micro-batch " + ", ".join(
        f"{s} {mean_sd(by_size[s]) if by_size[s] else 'diverged'}" for s in ends)
    largest = by_size[sizes[-1]]
    tested = [s for s in sizes[:-1] if len(by_size[s]) > 1 and len(largest) > 1]  # a t-test needs 2+ seeds a side
    results = {s: compare({str(s): by_size[s], str(sizes[-1]): largest}, alpha / len(tested))[0] for s in tested}
    if tested:
        real = [f"{s} {r['difference']:+.2f} points (p = {r['p']:.2g})" for s, r in results.items()
                if r["verdict"] == "real"]
        text += (f"; against {sizes[-1]} (Welch, real if p < {alpha / len(tested):.2g}): "
                 + (", ".join(real) + " real, the rest within seed noise" if real else "every size within seed noise"))
    lost = sum(failed.get((name, s), 0) for s in sizes)
    low = {s: at_test[name, s] for s in sizes if at_test.get((name, s))}
    if low:
        trained = [h["train_acc"][-1] for h in sweep if h["name"] == name and fails_at_test(h)]
        text += (f"; below 50% at test though training reached {min(trained):.1f}-{max(trained):.1f}% (running "
                 "train accuracy): " + ", ".join(f"{n} of {len(by_size[s])} at micro-batch {s}" for s, n in low.items()))
    return text + (f"; {lost} run(s) diverged." if lost else ".")


def findings(histories, reg_histories=(), sweep=(), report=None, curves=(), group_histories=(), study_groups=None,
             activations=(), per_image=(), alpha=0.05):
    """The study's conclusions as Markdown bullets, every number computed from the histories (and the regularizer
    report, the range tests, the group sweep, the activation statistics and `per_image`, the test accuracies of the
    micro-batch-1 BN runs with per-image statistics): which differences are real and which are within seed noise, what
    the sweep and the penalties did, how much learning rate each normalization takes."""
    lines = []
    finals = final_test_accuracies(histories)
    ranked = sorted(finals, key=lambda name: -statistics.fmean(finals[name]))
    lines.append("- **Main study** (final test accuracy, mean +- sd over seeds): " + ", ".join(
        f"{name} {mean_sd(finals[name])}" for name in ranked) + ".")
    results = compare(finals, alpha)
    paired = compare(paired_by_seed(histories), alpha, paired_test)
    if results:
        lines.append(f"- Pairwise (Welch and paired by seed, real if p < {results[0]['threshold']:.3g}): "
                     + "; ".join(map(_pair_sentence, results, paired)) + ".")
    if sweep:
        points, failed = sweep_points(sweep)
        at_test = count_failing_at_test(sweep)
        lines += [_sweep_sentence(name, by_size, sweep, failed, at_test, alpha) for name, by_size in points.items()]
    if per_image:
        eval_mode = [h["test_acc"][-1] for h in sweep if h["name"] == "BN" and h["micro_batch_size"] == 1]
        lines.append(f"- **BN at micro-batch 1**, test accuracy in eval mode (running averages) {mean_sd(eval_mode)}; "
                     f"the same weights with each test image normalized by its own statistics, as in training, "
                     f"{mean_sd(per_image)}.")
    if reg_histories:
        reg_finals = final_test_accuracies(reg_histories)
        reg_finals = {name: reg_finals.get(name) or finals[name] for name in ("BN", "BN + L1", "BN + L2")
                      if reg_finals.get(name) or finals.get(name)}
        results = [r for r in compare(reg_finals, alpha) if r["a"] == "BN"]
        lines.append("- **Regularizers** (final test accuracy): " + ", ".join(
            f"{name} {mean_sd(values)}" for name, values in reg_finals.items()) + "; "
            + "; ".join(map(_pair_sentence, results)) + ".")
    if curves:
        lines.append("- **Learning-rate range test** (median over seeds): " + "; ".join(
            _range_sentence(name, runs) for name, runs in by_name(curves).items()) + ".")
    if group_histories:
        by_groups = {g: list(accs.values()) for g, accs in finals_by_group(group_histories).items()}
        lines.append(f"- **GroupNorm group count** ({epochs_label(group_histories[0])}, final test accuracy): "
                     + ", ".join(f"{g} group{'s' * (g > 1)} {mean_sd(by_groups[g])}" for g in sorted(by_groups))
                     + f"; the study uses {study_groups}.")
    if activations:
        lines.append("- **Activations** (per-channel statistics after the normalization, trained weights): " + "; ".join(
            f"{run['name']} means {value_range(pooled(run, 'after_mean'))}, sds {value_range(pooled(run, 'after_sd'))}"
            for run in activations if run["weights"] == "trained") + ".")
    if report:
        lines.append("- Near-zero conv weights (|w| < 1% of the layer's largest): " + ", ".join(
            f"{name} {mean_sd([100 * f for f in r['near_zero']], '%', 1)}" for name, r in report.items())
            + "; clean train - test accuracy gap: " + ", ".join(
            f"{name} {mean_sd([a - b for a, b in zip(r['train_acc'], r['test_acc'])], ' pts')}"
            for name, r in report.items()) + ".")
    return "\n".join(lines)
