"""One test per mistake seen in public course projects of this study, named after the pitfall."""
import gc

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plots
import stats
import store
import utils
from model import Net


def test_l1_gradient_reaches_conv_weights_as_lambda_times_sign():
    """Pitfall: L1 added to an MSE on argmax, so no gradient reached the weights."""
    model, lam = Net("bn"), 1e-3
    (lam * utils.l1_penalty(model)).backward()
    for w in utils.conv_weights(model):
        assert torch.allclose(w.grad, lam * w.sign())


def test_cross_entropy_plus_l1_decreases_in_a_few_steps(tiny):
    (x, y), _ = tiny
    torch.manual_seed(0)
    model, lam = Net("bn", dropout=0.0), 1e-4
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def objective():
        return F.nll_loss(model(x[:128]), y[:128]) + lam * utils.l1_penalty(model)

    before = objective().item()
    for _ in range(10):
        optimizer.zero_grad()
        objective().backward()
        optimizer.step()
    assert objective().item() < before - 0.3


def test_l1_covers_conv_weights_only_not_norm_affine():
    """Pitfall: L1 over all parameters, normalization scale and shift included."""
    model = Net("gn")
    expected = sum(m.weight.abs().sum() for m in model.modules() if isinstance(m, nn.Conv2d))
    assert torch.allclose(utils.l1_penalty(model), expected)
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            nn.init.constant_(m.weight, 5.0)
            nn.init.constant_(m.bias, -3.0)
    assert torch.allclose(utils.l1_penalty(model), expected)
    utils.l1_penalty(model).backward()
    assert all(m.weight.grad is None for m in model.modules() if isinstance(m, nn.GroupNorm))


def test_l1_is_the_sum_not_a_mean_per_tensor():
    """Pitfall: L1 as a mean of |w| per tensor; ours is the sum of |w| over every conv weight."""
    model = Net("ln")
    for w in utils.conv_weights(model):
        nn.init.constant_(w, -0.01)
    conv_weight_count = 72 + 1152 + 128 + 1152 + 3 * 2304 + 160
    assert utils.l1_penalty(model).item() == pytest.approx(0.01 * conv_weight_count)


def test_l2_weight_decay_applies_to_conv_weights_only():
    model = Net("bn")
    optimizer = utils.make_optimizer(model, lr=0.1, l2=5e-4)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 5e-4 for p in g["params"]}
    assert decayed == {id(w) for w in utils.conv_weights(model)}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def lr_sequence(train, steps=30):
    torch.manual_seed(0)
    model = Net("ln")
    optimizer = utils.make_optimizer(model, lr=0.1)
    scheduler = utils.make_scheduler(optimizer, max_lr=0.1, total_steps=steps)
    lrs = []
    for _ in range(steps - 1):
        optimizer.zero_grad()
        if train:
            model(torch.randn(8, 1, 28, 28)).sum().backward()
        optimizer.step()  # without gradients, a no-op
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_schedule_depends_on_the_step_count_only():
    """Pitfall: the LR schedule stepped on test loss; ours is a function of the step k alone."""
    trained, untouched = lr_sequence(train=True), lr_sequence(train=False)
    assert trained == untouched
    peak = max(range(len(trained)), key=trained.__getitem__)
    assert trained[peak] == pytest.approx(0.1) and trained[0] < 0.1 and trained[-1] < 0.001


def test_the_headline_is_the_final_epoch_never_one_picked_on_the_test_set():
    runs = [{"name": "LN", "seed": seed, "params": 1, "epoch": [1, 2, 3], "seconds": [1, 1, 1],
             "train_loss": [1, 1, 1], "train_acc": [95.0, 97.0, 96.0], "test_loss": [1, 1, 1],
             "test_acc": [99.0, 99.6, final]} for seed, final in ((1, 99.3), (2, 99.1))]
    header, _, row = stats.seed_table(runs).splitlines()
    cells = [c.strip() for c in row.split("|")[1:-1]]
    columns = [c.strip() for c in header.split("|")[1:-1]]
    assert cells[columns.index("final test acc: mean ± sd [95% CI]")].startswith("99.20 ± 0.14%")
    assert not any("best" in column or "time" in column for column in columns)


def test_misclassified_are_deterministic_and_truly_mispredicted(tiny):
    """Pitfall: misclassified images taken from a shuffled last training pass."""
    _, (test_x, test_y) = tiny
    torch.manual_seed(0)
    model = Net("bn")
    first = utils.misclassified(utils.predict(model, test_x)[:, 0], test_y)
    second = utils.misclassified(utils.predict(model, test_x)[:, 0], test_y)
    assert first == second and len(first["index"]) == 10
    assert all(utils.predict(model, test_x[i:i + 1]).argmax().item() != test_y[i] for i in first["index"])


def test_test_loss_is_summed_per_sample_loss_over_n(tiny):
    """Pitfall: printed 'average' was the last batch's loss, or divided by the wrong count."""
    _, (x, y) = tiny
    torch.manual_seed(0)
    model = Net("gn").eval()
    with torch.no_grad():
        by_hand = sum(-model(x[i:i + 1])[0, y[i]].item() for i in range(len(y))) / len(y)
        correct = sum(model(x[i:i + 1]).argmax().item() == y[i] for i in range(len(y)))
    [(loss, accuracy)] = utils.evaluate(model, x, y)
    assert loss == pytest.approx(by_hand, rel=1e-5)
    assert accuracy == pytest.approx(100 * correct / len(y))


def test_train_loss_is_the_sample_weighted_mean_over_the_epoch(tiny):
    (x, y), _ = tiny
    x, y = x[:100], y[:100]  # batches of 32: three full ones, the last 4 samples dropped
    model = Net("ln", dropout=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay put: the loss can be recomputed
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loader = utils.training_batches(x, y, 32, [utils.seed_stream(3, "cpu")])
    [loss], [accuracy] = utils.train_epoch(model, optimizer, scheduler, loader)
    losses, hits = [], 0
    with torch.no_grad():
        for xb, yb in utils.training_batches(x, y, 32, [utils.seed_stream(3, "cpu")]):  # the same batches again
            out = model(xb)
            losses.append(F.nll_loss(out, yb[:, 0], reduction="none"))
            hits += (out.argmax(1) == yb[:, 0]).sum().item()
    assert loss == pytest.approx(torch.cat(losses).mean().item(), rel=1e-5)
    assert accuracy == pytest.approx(100 * hits / 96)


def test_train_accuracy_is_labelled_as_running():
    """Pitfall: the running train accuracy presented as if measured on the final weights."""
    h = {"name": "GN", "seed": 1, "params": 1, "epoch": [1], "seconds": [1], "train_loss": [0.1], "train_acc": [97.0],
         "test_loss": [0.05], "test_acc": [99.0]}
    fig = plots.plot_train_curves([h])
    assert all("running" in ax.get_title() for ax in fig.axes)
    plots.plt.close(fig)


def test_history_holds_plain_numbers_not_tensors(tiny, tmp_path):
    """Pitfall: loss tensors appended to a list, keeping every autograd graph alive."""
    [(_, history)] = utils.train_model({"name": "BN + L1", "model": {"norm": "bn"}, "l1": 1e-4}, tiny, epochs=1,
                                       batch_size=128, progress=False)
    for key in ("lr", "momentum", "seconds", "train_loss", "train_acc", "test_loss", "test_acc"):
        assert all(type(v) is float for v in history[key]), key
    store.save_histories([history], tmp_path / "h.json")
    assert store.load_histories(tmp_path / "h.json") == [history]


def live_graph_tensors():
    """Tensors alive in this process that still hold an autograd graph (a grad_fn)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is torch.Tensor and o.grad_fn is not None)


@pytest.mark.parametrize("micro_batch_size", [None, 16])
def test_no_step_keeps_its_autograd_graph_alive(tiny, micro_batch_size):
    """Pitfall: per-step loss tensors kept without .detach(): every step's graph stays in memory all epoch."""
    (train_x, train_y), _ = tiny
    model = Net("bn")
    optimizer = utils.make_optimizer(model, 0.05)
    scheduler = utils.make_scheduler(optimizer, 0.05, 4)
    counts = []
    utils.train_epoch(model, optimizer, scheduler, utils.training_batches(train_x, train_y, 128, [torch.Generator()]),
                      l1=1e-4,
                      accumulation=micro_batch_size, on_step=lambda: counts.append(live_graph_tensors()))
    assert len(counts) == 4 and counts[0] > 0  # the step in progress holds its graph
    assert counts[-1] == counts[0]  # but no step's graph outlives the next step


def test_seeded_runs_repeat_exactly_with_one_consistent_cudnn_setting(tiny):
    """Pitfall: cudnn.deterministic=True together with benchmark=True."""
    config = {"name": "BN + L1", "model": {"norm": "bn"}, "l1": 1e-4}
    [(_, first)] = utils.train_model(config, tiny, epochs=1, batch_size=64, seeds=[7], progress=False)
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    [(_, second)] = utils.train_model(config, tiny, epochs=1, batch_size=64, seeds=[7], progress=False)
    [(_, other_seed)] = utils.train_model(config, tiny, epochs=1, batch_size=64, seeds=[8], progress=False)
    keys = ("train_loss", "train_acc", "test_loss", "test_acc")
    assert [first[k] for k in keys] == [second[k] for k in keys]
    assert first["train_loss"] != other_seed["train_loss"]


@pytest.mark.parametrize("kwargs", [{"max_degrees": 7.0, "max_shift": 0.0}, {"max_degrees": 0.0, "max_shift": 2.0}])
def test_every_augmentation_acts_on_grayscale_digits(mnist, kwargs):
    """Pitfall: hue/saturation jitter on 1-channel images, a no-op; each of ours changes the pixels."""
    (x, _), _ = mnist
    uniforms = torch.rand(32, 3) * 0.3  # at least 40% of the largest rotation and shift, one way
    changed = (utils.augment(x[:32], uniforms, **kwargs) - x[:32]).abs().amax((1, 2, 3))
    assert (changed > 0.3).float().mean() > 0.9
    assert torch.allclose(utils.augment(x[:32], uniforms, max_degrees=0.0, max_shift=0.0), x[:32], atol=1e-5)


def test_misclassified_grid_shows_denormalized_pixels_with_predicted_and_actual(tiny):
    """Pitfall: normalized pixels shown (clipping warnings), tiles without the actual label."""
    _, (test_x, test_y) = tiny
    mistakes = utils.misclassified(utils.predict(Net("gn"), test_x)[:, 0], test_y)
    fig = plots.plot_misclassified(test_x, mistakes, "GN")
    for ax, p, a in zip(fig.axes, mistakes["predicted"], mistakes["actual"]):
        assert f"predicted {p}" in ax.get_title() and f"actual {a}" in ax.get_title()
        pixels = ax.get_images()[0].get_array()
        assert pixels.min() >= 0 and pixels.max() <= 1
    plots.plt.close(fig)


def test_layernorm_and_groupnorm_are_what_the_docs_say():
    """Pitfall: nn.LayerNorm((C,H,W), elementwise_affine=False) called LN; "groups of 4" vs "4 groups"."""
    ln_layers = [m for m in Net("ln").modules() if isinstance(m, nn.GroupNorm)]
    gn_layers = [m for m in Net("gn").modules() if isinstance(m, nn.GroupNorm)]
    # LN: one group over all channels, with a learned scale and shift per channel (not per pixel)
    assert all(m.num_groups == 1 and m.affine and m.weight.shape == (m.num_channels,) for m in ln_layers)
    # GN: 4 groups in every layer, so 2 channels per group at width 8 and 4 channels per group at width 16
    assert {(m.num_groups, m.num_channels // m.num_groups) for m in gn_layers} == {(4, 2), (4, 4)}
    # and the groups really are contiguous blocks of channels normalized together
    x = torch.randn(3, 16, 5, 5) * torch.arange(1.0, 17.0).view(1, 16, 1, 1)
    y = gn_layers[-1](x).view(3, 4, 4, 5, 5)
    assert torch.allclose(y.mean((2, 3, 4)), torch.zeros(3, 4), atol=1e-4)
