"""What the normalizations do (issue 10): activation statistics from hooks, the learning-rate range test, the
paired-seed design and its test, the group-count sweep."""
import json
import math
import re
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import stats as scipy_stats

import plots
import probes
import stats
import store
from helpers import job_of, key_of
import utils
from model import Net
from helpers import fake_history


# ---------------------------------------------------------------- paired seeds

def test_paired_by_seed_pairs_runs_by_their_seed_not_their_order():
    histories = [dict(fake_history("A", [99.0]), seed=2), dict(fake_history("A", [98.0]), seed=1),
                 dict(fake_history("B", [97.0]), seed=1), dict(fake_history("B", [96.0]), seed=2),
                 dict(fake_history("B", [95.0]), seed=3)]  # seed 3 has no partner in A: left out
    assert stats.paired_by_seed(histories) == {"A": [98.0, 99.0], "B": [97.0, 96.0]}


def test_the_comparison_table_reports_welch_and_paired_side_by_side():
    finals = {"A": [99.50, 99.58, 99.47, 99.61, 99.55], "B": [99.41, 99.52, 99.44, 99.50, 99.47]}
    histories = [dict(fake_history(name, [98.0, acc]), seed=seed)
                 for name, accs in finals.items() for seed, acc in enumerate(accs, 1)]
    row = stats.comparison_table(histories).splitlines()[-1]
    paired, welch = scipy_stats.ttest_rel(*finals.values()).pvalue, scipy_stats.ttest_ind(*finals.values(),
                                                                                            equal_var=False).pvalue
    assert welch > 0.05 > paired  # only the paired test sees it, and only it decides
    assert row.endswith(f"| {paired:.2g} ({paired:.2g}) | 0.062 | {welch:.2g} | **different**, within ±0.2: A higher |")


def test_same_seed_gives_every_normalization_the_same_start_and_the_same_random_stream(tiny):
    """Norm layers draw no random numbers: the same conv weights at init, and after a training epoch the random
    seed's stream has made the same draws (batch order, augmentations, dropout masks) for BN, LN, GN and none."""
    starts, states = [], []
    for norm in ("bn", "ln", "gn", "none"):
        utils.set_seed(3)
        model = Net(norm)
        starts.append([w.detach().clone() for w in utils.conv_weights(model)])
        stream = utils.seed_stream(3, "cpu")
        model.draw_from([stream])
        optimizer = utils.make_optimizer(model, 0.01)
        scheduler = utils.make_scheduler(optimizer, 0.01, 4)
        utils.train_epoch(model, optimizer, scheduler, utils.training_batches(*tiny[0], 128, [stream]))
        states.append(stream.get_state())
    for weights, state in zip(starts[1:], states[1:]):
        assert all(torch.equal(w, w0) for w, w0 in zip(weights, starts[0]))
        assert torch.equal(state, states[0])
    assert not torch.equal(states[0], utils.seed_stream(3, "cpu").get_state())  # the epoch did draw from it


# ---------------------------------------------------------------- the unnormalized reference

def test_the_unnormalized_reference_is_the_same_net_without_its_normalization_layers():
    utils.set_seed(5)
    bn = Net("bn")
    utils.set_seed(5)
    none = Net("none")
    assert not any(isinstance(m, probes.NORM_LAYERS) for m in none.modules())
    assert sum(isinstance(m, nn.Identity) for m in none.modules()) == 6  # one per normalized conv
    assert all(torch.equal(a, b) for a, b in zip(utils.conv_weights(none), utils.conv_weights(bn)))
    x = torch.randn(2, 1, 28, 28)
    none.eval()
    by_hand = x
    for block in bn.features:  # the BN net's layers with each BatchNorm skipped
        by_hand = (nn.Sequential(*(m for m in block if not isinstance(m, nn.BatchNorm2d)))
                   if isinstance(block, nn.Sequential) else block).eval()(by_hand)
    assert torch.allclose(none(x), F.log_softmax(by_hand.flatten(1), 1), atol=1e-6)


# ---------------------------------------------------------------- learning-rate range test

def test_the_range_test_raises_the_learning_rate_exactly_exponentially(tiny):
    spec = store.lr_range_spec({"name": "GN", "model": {"norm": "gn"}}, seed=1, batch_size=64, lr_min=1e-3,
                               lr_max=10.0, train_size=512)
    [curve] = utils.lr_range_test([spec], tiny)
    lrs = torch.tensor(curve["lr"], dtype=torch.float64)
    assert len(lrs) == len(curve["loss"]) == 8  # 512 / 64 steps: the whole epoch
    assert lrs[0].item() == pytest.approx(1e-3) and lrs[-1].item() == pytest.approx(10.0)
    ratios = lrs[1:] / lrs[:-1]
    assert torch.allclose(ratios, torch.full_like(ratios, 1e4 ** (1 / 7)), rtol=1e-9)  # one factor per step
    assert curve["loss"][0] == pytest.approx(math.log(10), abs=0.2)  # the first batch: a guess among 10 digits
    [short] = utils.lr_range_test([dict(spec, train_size=300)], tiny)  # 4 full batches of 64, the rest left out
    assert len(short["lr"]) == 4 and short["lr"][-1] == pytest.approx(10.0)
    assert [utils.exponential_lr(0.01, 1.0, 2)(k) for k in (0, 1)] == pytest.approx([0.01, 1.0])


def test_smoothed_is_a_bias_corrected_moving_average():
    assert probes.smoothed([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # no pull toward 0 at the start
    assert probes.smoothed([1.0, 3.0], beta=0.5) == pytest.approx([1.0, (0.5 * 0.5 + 0.5 * 3.0) / (1 - 0.5 ** 2)])


def test_the_edges_of_divergence_unsmoothed():
    """With beta = 0 the smoothed loss is the loss itself, so each rule can be met exactly (binary fractions)."""
    def step(losses, min_improvement=0.125):
        return probes.divergence_step(losses, beta=0.0, min_improvement=min_improvement)

    assert probes.divergence_step([math.nan, 1.0]) == 0  # not a number from the first step
    assert step([1.0, 3.0, 3.0]) is None  # only rose: it never learned, so there is nothing to lose
    assert step([1.0, 0.875, 5.0]) == 2  # an improvement of exactly min_improvement of the start counts
    assert step([2.0, 1.875, 10.0]) is None  # 0.125 of 2.0 is 1/16 of it: below min_improvement
    assert step([1.0, 8.0, 0.5, 5.0]) == 3  # measured against the start, not against the second step
    assert step([1.0, 0.5, 0.75, 5.0]) == 3  # at the midpoint (0.75) is not above it yet


def test_a_network_learned_when_its_lowest_smoothed_loss_is_below_90_percent_of_chance():
    lrs = [0.001 * 1.1 ** k for k in range(30)]
    for loss, learned in ((2.05, True), (2.1, False)):  # 0.9 ln 10 = 2.072
        assert probes.range_summary({"lr": lrs, "loss": [loss] * 30})["learned"] is learned


def test_divergence_is_where_the_loss_leaves_for_good_not_a_spike_it_recovers_from():
    blow_up = [2.3] * 20 + [0.5] * 40 + [2.3] * 40
    step = probes.divergence_step(blow_up)
    values = probes.smoothed(blow_up)
    midpoint = (values[0] + min(values)) / 2
    assert values[step - 1] <= midpoint < min(values[step:])  # above the midpoint from here on, and not before
    spike = [2.3] * 20 + [0.5] * 30 + [5.0] * 10 + [0.4] * 40  # climbs to 3.4, far above the start, then recovers
    assert max(probes.smoothed(spike)[50:60]) > 2.3 and probes.divergence_step(spike) is None
    spike_then_blow_up = spike + [2.3] * 30
    assert probes.divergence_step(spike_then_blow_up) > 100  # the last departure, not the first
    assert probes.divergence_step([2.3] * 50 + [0.3] * 50) is None  # never climbs back
    assert probes.divergence_step([2.3] * 10 + [2.25] * 10 + [2.3] * 10) is None  # never learned: nothing to lose
    assert probes.divergence_step([2.3, 1.0, float("nan")]) == 2
    assert probes.divergence_step([2.3, 2.3, float("inf")]) == 2  # never learned, then no number: diverged there


def test_the_divergence_point_depends_on_the_smoothing_and_both_are_reported():
    lrs = [10 ** (-3 + k / 20) for k in range(120)]
    curve = {"name": "LN", "seed": 1, "lr": lrs, "loss": [2.3] * 20 + [0.5] * 60 + [1.8] * 6 + [0.5] * 4 + [2.3] * 30}
    short, long = probes.divergence_step(curve["loss"]), probes.divergence_step(curve["loss"], probes.LONG_SMOOTHING)
    assert short != long
    summary = probes.range_summary(curve)
    assert (summary["diverged_lr"], summary["diverged_lr_long"]) == (lrs[short], lrs[long])
    row = probes.divergence_table([curve, dict(curve, seed=2, loss=[2.3] * 20 + [0.5] * 100)]).splitlines()[2]
    assert row.startswith("| LN | 2 | ") and f"({lrs[short]:.3g}, never) |" in row and f"({lrs[long]:.3g}, never) |" in row
    assert row.count("| not in the range (") == 2  # the median of one learning rate and "never" is never


def test_range_tests_are_stored_and_loaded_not_run_again(tiny, tmp_path, capsys):
    specs = [store.lr_range_spec({"name": name, "model": {"norm": norm}}, seed=1, batch_size=64, train_size=256)
             for name, norm in (("BN", "bn"), ("no norm", "none"))]
    first = store.lr_range_or_load(specs, tmp_path, tiny)
    assert capsys.readouterr().out.count("run now") == 2
    again = store.lr_range_or_load(specs, tmp_path, tiny)
    assert capsys.readouterr().out.count("loaded from the store") == 2
    assert again == first and [c["name"] for c in first] == ["BN", "no norm"]
    assert len(list(tmp_path.glob("*.json"))) == 2
    table = probes.divergence_table(first)
    assert "| BN | 1 |" in table and "| no norm | 1 |" in table
    damaged = sorted(tmp_path.glob("*.json"))[0]
    damaged.write_text(damaged.read_text().replace('"loss"', '"losses"'))
    assert store.lr_range_or_load(specs, tmp_path, tiny) == first  # run again, to the same curve
    out = capsys.readouterr().out
    assert f"entry {damaged} is unreadable (KeyError" in out and out.count("run now") == 1
    damaged.write_text(damaged.read_text().replace('"loss": [', '"loss": "not a list", "was": ['))  # again
    assert store.lr_range_or_load(specs, tmp_path, tiny) == first
    assert f"entry {damaged} is unreadable (TypeError: its curve holds no list of losses); training it again" in \
        capsys.readouterr().out


def test_the_committed_range_tests_are_what_lr_range_spec_makes_of_their_settings():
    """Each committed range test's spec (its run store key) rebuilt from its settings: the notebook finds them all."""
    runs = Path(__file__).resolve().parent.parent / "runs"
    committed = [json.loads(path.read_text())["spec"] for path in runs.glob("*.json")]
    ranges = [spec for spec in committed if spec.get("kind") == "lr_range_test"]
    assert len(ranges) == 15  # 3 seeds of BN, LN, GN and both nets without normalization
    for spec in ranges:
        settings = {k: spec[k] for k in ("batch_size", "lr_min", "lr_max", "train_size", "device")}
        assert store.lr_range_spec({"name": spec["name"], "model": spec["model"]}, spec["seed"], **settings) == spec


def test_a_range_test_entry_records_its_key_spec_code_and_how_it_ran(tiny, tmp_path, capsys):
    specs = [store.lr_range_spec({"name": "BN", "model": {"norm": "bn"}}, seed, batch_size=64, train_size=256)
             for seed in (1, 2)]  # one network's seeds: run together
    folder = tmp_path / "a" / "store"  # made on the way
    start = time.perf_counter()
    curves = store.lr_range_or_load(specs, folder, tiny, verbose=False)
    elapsed = time.perf_counter() - start
    where = f"{utils.device_name('cpu')}, 2 seeds together"
    assert capsys.readouterr().out == f"2 range tests: 0 loaded from the store, 2 run now; run on {where}\n"
    assert [(c["seed"], c["trained_on"]) for c in curves] == [(1, f"{where}, torch {torch.__version__}"),
                                                              (2, f"{where}, torch {torch.__version__}")]
    entries = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    assert all(p.read_text() == json.dumps(json.loads(p.read_text()), indent=1) for p in folder.glob("*.json"))
    assert sorted(e["spec"]["seed"] for e in entries.values()) == [1, 2]
    for key, entry in entries.items():
        assert (entry["key"], entry["code_version"]) == job_of(entry["spec"], folder)[1:] and entry["key"] == key
        assert entry["processor"] == utils.processor_name()
        assert entry["trained_on"] == where
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", entry["trained_at"])
        assert 0 < entry["seconds"] <= elapsed / 2  # each seed's share of the pair's time
    store.lr_range_or_load(specs[:1], folder, tiny, retrain=True)
    out = capsys.readouterr().out
    assert "run now" in out and "loaded" not in out
    path = folder / f"{key_of(specs[0], folder)}.json"
    alone = json.loads(path.read_text())
    assert alone["trained_on"] == utils.device_name("cpu")  # one seed: nothing "together"
    n = len(alone["curve"]["loss"])
    line = (f"            BN seed 1: {n} steps, %s | loaded from the store (run {alone['trained_at']} on "
            f"{alone['trained_on']})\n")
    store.lr_range_or_load(specs[:1], folder, tiny)
    assert capsys.readouterr().out == line % "did not diverge"
    alone["curve"]["loss"] = [2.3, 0.5, 0.5, 50.0][:n]  # a curve that leaves for good
    path.write_text(json.dumps(alone))
    step = probes.divergence_step(alone["curve"]["loss"])
    store.lr_range_or_load(specs[:1], folder, tiny)
    assert capsys.readouterr().out == line % f"diverged at lr {alone['curve']['lr'][step]:.3g}"
    store.lr_range_or_load(specs, folder, tiny, verbose=False)
    both = f"{utils.device_name('cpu')} and {where}"
    assert capsys.readouterr().out == f"2 range tests: 2 loaded from the store; run on {both}\n"


# ---------------------------------------------------------------- activation statistics

def test_hook_statistics_equal_a_hand_computation(mnist):
    images = mnist[1][0][:6]
    for norm, groups, dims in (("bn", 1, (0, 2, 3)), ("gn", 4, (2, 3, 4)), ("ln", 1, (2, 3, 4))):
        utils.set_seed(1)
        model = Net(norm, groups=groups)
        found = probes.activation_statistics(model, images)
        assert len(found) == 6 and [layer["channels"] for layer in found] == [8, 16, 16, 16, 16, 16]
        conv = model.features[0][0]
        x = F.conv2d(images, conv.weight)  # the first normalization layer's input, by hand
        assert found[0]["before_mean"] == pytest.approx(x.mean((0, 2, 3)).tolist(), abs=6e-5)  # rounded to 4 decimals
        assert found[0]["before_sd"] == pytest.approx(x.std((0, 2, 3), correction=0).tolist(), abs=6e-5)
        g = 8 if norm == "bn" else 1 if norm == "ln" else groups  # statistics per channel / per sample and group
        if norm == "bn":
            z = (x - x.mean(dims, keepdim=True)) / torch.sqrt(x.var(dims, keepdim=True, unbiased=False) + 1e-5)
        else:
            v = x.view(6, g, 8 // g, 26, 26)
            z = ((v - v.mean(dims, keepdim=True)) / torch.sqrt(v.var(dims, keepdim=True, unbiased=False) + 1e-5))
            z = z.view_as(x)
        assert found[0]["after_mean"] == pytest.approx(z.mean((0, 2, 3)).tolist(), abs=1.5e-4)
        assert found[0]["after_sd"] == pytest.approx(z.std((0, 2, 3), correction=0).tolist(), abs=1.5e-4)


def test_activation_statistics_show_what_each_normalization_fixes_and_leave_the_model_alone(mnist):
    images = mnist[1][0][:64]
    utils.set_seed(2)
    bn = Net("bn")
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    for layer in probes.activation_statistics(bn.eval(), images):  # BN: every channel exactly standardized
        assert layer["after_mean"] == pytest.approx([0.0] * layer["channels"], abs=1e-5)
        assert layer["after_sd"] == pytest.approx([1.0] * layer["channels"], abs=1e-3)
    assert all(torch.equal(v, before[k]) for k, v in bn.state_dict().items())  # running averages untouched
    assert not bn.training
    utils.set_seed(2)
    ln = probes.activation_statistics(Net("ln"), images)
    spread = max(max(layer["after_mean"]) - min(layer["after_mean"]) for layer in ln)
    assert spread > 0.1  # LN fixes each sample's statistics over all channels, not each channel's


def test_the_standardized_output_times_scale_plus_shift_is_the_layer_output():
    x = torch.randn(4, 8, 5, 5) * 3 + 1
    for layer in (nn.BatchNorm2d(8), nn.GroupNorm(2, 8), nn.GroupNorm(1, 8)):
        nn.init.uniform_(layer.weight, 0.5, 2.0)
        nn.init.uniform_(layer.bias, -1.0, 1.0)
        scaled = probes._standardize(layer, x) * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
        assert torch.allclose(scaled, layer.train()(x), atol=1e-5)


# ---------------------------------------------------------------- group count

def group_histories(accuracies):
    """{groups: [final accuracy of seed 1, 2, ...]} as histories of GN runs."""
    return [dict(fake_history(f"GN {groups}", [98.0, acc]), seed=seed,
                 config={"name": f"GN {groups}", "model": {"norm": "gn", "groups": groups}})
            for groups, accs in accuracies.items() for seed, acc in enumerate(accs, 1)]


def test_the_group_plot_draws_each_count_s_mean_and_each_seed_paired():
    accuracies = {1: [99.10, 99.20, 99.15], 4: [99.30, 99.35, 99.28], 8: [99.31, 99.33, 99.30]}
    figure = plots.plot_group_sweep(group_histories(accuracies), study_groups=4)
    mean_line = [line for line in figure.axes[0].lines if line.get_label() == "mean over seeds"][0]
    assert list(mean_line.get_xdata()) == [1, 4, 8]
    assert list(mean_line.get_ydata()) == pytest.approx([99.15, 99.31, 99.3133], abs=1e-3)
    plots.plt.close(figure)


# ---------------------------------------------------------------- BatchNorm at micro-batch 1

def test_per_image_statistics_are_what_batchnorm_at_micro_batch_1_computes_in_training(tiny):
    """The copy normalizes each test image as Net(micro_batch=1) normalized each training image (dropout off), with
    the trained scale and shift: after a few steps its outputs equal that net's in training mode, and differ from eval
    mode's running averages; the model itself is left as it was."""
    (train_x, train_y), (test_x, _) = tiny
    model = Net("bn", dropout=0.0, micro_batch=1)
    optimizer = utils.make_optimizer(model, 0.05)
    utils.train_epoch(model, optimizer, utils.make_scheduler(optimizer, 0.05, 4),
                      utils.training_batches(train_x, train_y, 128, [torch.Generator()], augmented=False))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    own = probes.with_per_image_statistics(model)
    with torch.no_grad():
        per_image = own(test_x[:64])
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the model is untouched
        training, running = model.train()(test_x[:64]), model.eval()(test_x[:64])
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in own.modules()) == 6
    assert not any(isinstance(m, nn.BatchNorm2d) for m in own.modules())
    torch.testing.assert_close(per_image, training, rtol=1e-4, atol=1e-4)
    assert (per_image - running).abs().max() > 0.1
    plain = probes.with_per_image_statistics(Net("bn"))  # a run loaded from the store is a plain BatchNorm net
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in plain.modules()) == 6
    model.features[0][1].eps = 0.5  # the layer's own eps, not InstanceNorm2d's default
    assert probes.with_per_image_statistics(model).features[0][1].eps == 0.5
    on_meta = probes.with_per_image_statistics(Net("bn").to("meta"))  # meta stands in for a GPU
    assert {p.device.type for p in on_meta.parameters()} == {"meta"}


@pytest.mark.parametrize("layer", [nn.BatchNorm2d(8, eps=0.5), nn.GroupNorm(4, 8, eps=0.5)])
def test_the_standardized_activation_is_what_the_layer_computes_before_its_scale_and_shift(layer):
    """What activation_statistics reports as "after" the normalization: the layer's output in training mode with a
    unit scale and no shift, its own eps included."""
    x = torch.randn(6, 8, 5, 5)
    torch.testing.assert_close(probes._standardize(layer, x), layer.train()(x))


def test_activation_statistics_hold_no_signed_zeros(mnist):
    """A mean of ~1e-9 rounds to 0.0 or -0.0 by the float noise of the machine and its thread count: the committed
    JSON must not flip between them from one execution to the next."""
    (images, _), _ = mnist
    torch.manual_seed(0)
    found = probes.activation_statistics(Net("bn"), images[:256])  # BN's channel means after it: all about 0
    values = [v for layer in found for v in layer["after_mean"]]
    assert values.count(0.0) == len(values) and not any(math.copysign(1, v) < 0 for v in values)
    assert not re.search(r"-0\.0[,\]]", json.dumps(found))
