"""The study's answer and closing findings: Markdown computed from the histories, the regularizer report, the range
tests, the group-count runs and the activation statistics, never typed in. Every verdict is stats.compare_family's."""
import statistics

from budget import THRESHOLDS, budget_comparisons, epochs_to_reach, finals_by_budget, normalization_comparisons
from probes import epochs_label, group_comparisons, pooled, range_summary, value_range
from stats import (MARGIN, by_name, compare_family, count_failing_at_test, fails_at_test, final_test_accuracies,
                   finals_by_seed, interval, mean_sd, sweep_comparisons, sweep_points, verdict_words)


def _verdict(result):
    """The table's verdict in running text: "different: BN + L1 higher", "equivalent within ±0.2", "undecided"."""
    return verdict_words(result).replace("**", "")


def _pair_sentence(result):
    return f"{result['a']} − {result['b']} {interval(result)} points, {_verdict(result)}"


def answer(histories):
    """The main study's answer in two sentences: each configuration's final test accuracy, then each pair's paired
    difference with its 95% interval and verdict, from the same compare_family as the table below it."""
    finals = final_test_accuracies(histories)
    ranked = sorted(finals, key=lambda name: -statistics.fmean(finals[name]))
    seeds = sorted({len(values) for values in finals.values()})
    text = (f"Final test accuracy, mean ± sd over {'/'.join(map(str, seeds))} seeds: "
            + ", ".join(f"{name} {mean_sd(finals[name])}" for name in ranked) + ".")
    results = compare_family(finals_by_seed(histories))
    if results:
        text += (f" Paired by seed (95% interval; Holm-corrected paired t-test; margin ±{MARGIN:g}): "
                 + "; ".join(map(_pair_sentence, results)) + ".")
    return text


FAMILY_LABELS = {"beyond": f"different beyond ±{MARGIN:g}", "within": f"different within ±{MARGIN:g}",
                 "different": f"different (within or beyond ±{MARGIN:g} undecided)",
                 "equivalent": f"equivalent within ±{MARGIN:g}", "undecided": "undecided", "untestable": "untestable"}


def _family_sentence(results):
    """A family's verdicts grouped: "different beyond ±0.2: 1 (-85.48 [...]), 2 (...); equivalent within ±0.2: ...";
    each comparison named by its first side when all share their second, else "a − b"."""
    one_reference = len({r["b"] for r in results}) == 1  # "micro-batch 2", else "BN − LN"
    name = (lambda r: r["a"]) if one_reference else (lambda r: f"{r['a']} − {r['b']}")
    parts = []
    for verdict, label in FAMILY_LABELS.items():
        chosen = [r for r in results if r["verdict"] == verdict]
        if chosen:
            parts.append(f"{label}: " + ", ".join(f"{name(r)} ({interval(r)})" for r in chosen))
    return "; ".join(parts)


def regularizer_comparisons(histories, reg_histories):
    """The regularizer family of the ANALYSIS: BN + L1 (a main-study configuration) and BN + L2 each against plain BN,
    paired by seed; returns ({name: {seed: final test accuracy}}, results)."""
    every = {**finals_by_seed(histories), **finals_by_seed(reg_histories)}
    finals = {name: every[name] for name in ("BN", "BN + L1", "BN + L2") if name in every}
    return finals, compare_family(finals, [(name, "BN") for name in finals if name != "BN"])


def _range_sentence(name, curves):
    summaries = [range_summary(c) for c in curves]
    lowest = statistics.median(r["lowest"] for r in summaries)
    if not any(r["learned"] for r in summaries):
        return f"{name} never learned (lowest smoothed loss {lowest:.2f}; chance is ln 10 = 2.30)"
    at, long = (statistics.median(r[key] for r in summaries) for key in ("diverged_lr", "diverged_lr_long"))
    return (f"{name} reached a loss of {lowest:.2f}; it left for good after lr {at:.3g} ({long:.3g} with the longer "
            "smoothing)")


def _sweep_sentence(name, by_size, sweep, failed, at_test, results):
    """One normalization of the micro-batch sweep: its smallest and largest size, each size's verdict against the
    largest, and the runs that diverged or fail at test."""
    sizes = sorted(by_size)
    ends = sizes[:1] if len(sizes) == 1 else [sizes[0], sizes[-1]]
    text = f"- **Micro-batch sweep, {name}**: micro-batch " + ", ".join(
        f"{s} {mean_sd(by_size[s]) if by_size[s] else 'diverged'}" for s in ends)
    if results:
        text += f"; each size against {sizes[-1]}, paired by seed (points): " + _family_sentence(results)
    lost = sum(failed.get((name, s), 0) for s in sizes)
    low = {s: at_test[name, s] for s in sizes if at_test.get((name, s))}
    if low:
        trained = [h["train_acc"][-1] for h in sweep if h["name"] == name and fails_at_test(h)]
        text += (f"; below 50% at test though training reached {min(trained):.1f}-{max(trained):.1f}% (running "
                 "train accuracy): " + ", ".join(f"{n} of {len(by_size[s])} at micro-batch {s}" for s, n in low.items()))
    return text + (f"; {lost} run(s) diverged." if lost else ".")


def _budget_sentences(histories, norm_histories, budget_runs):
    """What normalization buys: the four networks at the study's length and their pairs, then each budget's epochs to
    reach the thresholds and each budget family's verdicts."""
    finals = final_test_accuracies(norm_histories)
    norm_results = normalization_comparisons(norm_histories, histories)
    lines = [f"- **What normalization buys** ({epochs_label(norm_histories[0])}, final test accuracy): "
             + ", ".join(f"{name} {mean_sd(values)}" for name, values in finals.items())
             + "; paired by seed: " + "; ".join(map(_pair_sentence, norm_results)) + "."]
    if budget_runs:
        every = list(budget_runs) + list(norm_histories)
        by_budget = finals_by_budget(every)
        lines.append("- **Training budget**, the shortest whose mean reaches " + "; ".join(
            f"{t:.1f}%: " + ", ".join(f"{name} {epochs_to_reach(b, t) or f'more than {max(b)}'}"
                                    for name, b in by_budget.items()) for t in THRESHOLDS)
            + "; each budget's pairs: " + "; ".join(
            f"{epochs} epoch{'s' * (epochs > 1)}: {_family_sentence(results)}"
            for epochs, results in budget_comparisons(budget_runs).items()) + ".")
    return lines


def findings(histories, reg_histories=(), sweep=(), report=None, curves=(), group_histories=(), study_groups=None,
             activations=(), per_image=(), norm_histories=(), budget_runs=()):
    """The study's conclusions as Markdown bullets, every number computed from the histories (and the regularizer
    report, the range tests, the group-count runs, the activation statistics, `per_image`, the test accuracies of
    the micro-batch-1 BN runs with per-image statistics, BN, LN, GN and the control at the study's length, and the
    budget runs), every verdict by the one paired analysis."""
    lines = [f"- **Main study**: {answer(histories)}"]
    if norm_histories:
        lines += _budget_sentences(histories, norm_histories, budget_runs)
    if sweep:
        points, failed = sweep_points(sweep)
        at_test = count_failing_at_test(sweep)
        families = sweep_comparisons(sweep)
        lines += [_sweep_sentence(name, by_size, sweep, failed, at_test, families.get(name))
                  for name, by_size in points.items()]
    if per_image:
        eval_mode = [h["test_acc"][-1] for h in sweep if h["name"] == "BN" and h["micro_batch_size"] == 1]
        lines.append(f"- **BN at micro-batch 1**, test accuracy in eval mode (running averages) {mean_sd(eval_mode)}; "
                     f"the same weights with each test image normalized by its own statistics, as in training, "
                     f"{mean_sd(per_image)}.")
    if reg_histories:
        finals, results = regularizer_comparisons(histories, reg_histories)
        lines.append("- **Regularizers** (final test accuracy): " + ", ".join(
            f"{name} {mean_sd(list(values.values()))}" for name, values in finals.items()) + "; paired by seed: "
            + "; ".join(map(_pair_sentence, results)) + ".")
    if curves:
        lines.append("- **Learning-rate range test** (median over seeds): " + "; ".join(
            _range_sentence(name, runs) for name, runs in by_name(curves).items()) + ".")
    if group_histories:
        results = group_comparisons(group_histories, study_groups)
        epochs = group_histories[0]["epoch"][-1]
        lines.append(f"- **GroupNorm group count** ({epochs} epochs, final test accuracy, each count against the "
                     f"study's {study_groups}, paired by seed): " + "; ".join(map(_pair_sentence, results)) + ".")
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
