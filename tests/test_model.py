import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import utils
from model import GhostBatchNorm2d, Net

EXPECTED_NORM_LAYER = {"bn": nn.BatchNorm2d, "ln": nn.GroupNorm, "gn": nn.GroupNorm}


def norm_layers(model):
    return [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]


@pytest.mark.parametrize("norm", ["bn", "ln", "gn"])
def test_layer_types_and_parameter_count(norm):
    model = Net(norm)
    layers = norm_layers(model)
    assert len(layers) == 6 and all(type(m) is EXPECTED_NORM_LAYER[norm] for m in layers)
    if norm == "ln":
        assert all(m.num_groups == 1 for m in layers)
    if norm == "gn":
        assert all(m.num_groups == 4 for m in layers)
    conv = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    affine = sum(2 * (m.num_features if norm == "bn" else m.num_channels) for m in layers)
    assert sum(p.numel() for p in model.parameters()) == conv + affine < 10_000


@pytest.mark.parametrize("norm", ["bn", "ln", "gn"])
def test_output_is_log_probabilities_per_class(norm):
    out = Net(norm)(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(5), atol=1e-5)


def first_norm_output(norm, x, groups=4):
    """Output of the first normalization layer (affine at its identity init) for input x."""
    model = Net(norm, groups=groups, dropout=0.0).train()
    return model.features[0][1](model.features[0][0](x))


def test_batchnorm_normalizes_each_channel_over_batch_and_pixels():
    y = first_norm_output("bn", torch.randn(16, 1, 28, 28) * 3 + torch.arange(16.0).view(16, 1, 1, 1))
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(8), atol=1e-4)
    assert torch.allclose(y.var((0, 2, 3), unbiased=False), torch.ones(8), atol=1e-3)
    # but not per sample: a single sample's channels keep their own offsets
    assert y.mean((2, 3)).abs().max() > 0.5


def test_layernorm_normalizes_each_sample_over_channels_and_pixels():
    x = torch.randn(6, 1, 28, 28) * torch.arange(1, 7).view(6, 1, 1, 1) + torch.arange(6).view(6, 1, 1, 1)
    y = first_norm_output("ln", x)
    assert torch.allclose(y.mean((1, 2, 3)), torch.zeros(6), atol=1e-4)
    assert torch.allclose(y.var((1, 2, 3), unbiased=False), torch.ones(6), atol=1e-3)
    # channels are not normalized one by one
    assert y.mean((2, 3)).abs().max() > 0.05


def test_groupnorm_normalizes_each_sample_and_group_of_channels():
    x = torch.randn(6, 1, 28, 28) * 2 - 1
    y = first_norm_output("gn", x, groups=4).view(6, 4, 2, 26, 26)  # 8 channels: 4 groups of 2
    assert torch.allclose(y.mean((2, 3, 4)), torch.zeros(6, 4), atol=1e-4)
    assert torch.allclose(y.var((2, 3, 4), unbiased=False), torch.ones(6, 4), atol=1e-3)
    assert y.mean((3, 4)).abs().max() > 0.05  # single channels within a group are not centred


def test_groupnorm_is_independent_of_other_samples_and_batchnorm_is_not():
    x = torch.randn(8, 1, 28, 28)
    for norm, independent in (("gn", True), ("ln", True), ("bn", False)):
        torch.manual_seed(0)
        alone = first_norm_output(norm, x[:4])
        torch.manual_seed(0)
        together = first_norm_output(norm, torch.cat([x[:4], 5 * x[4:] + 3]))[:4]
        assert torch.allclose(alone, together, atol=1e-5) == independent, norm


@pytest.mark.parametrize("kwargs, message", [
    ({"norm": "batch"}, "unknown norm 'batch'; allowed: 'bn', 'ln', 'gn', 'none'"),
    ({"copies": 0}, "copies must be a positive int, got 0"),
    ({"norm": "gn", "groups": 3}, "groups=3 does not divide a layer's 8 channels"),
    ({"norm": "gn", "groups": 0}, "groups must be a positive int"),
    ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
    ({"dropout": -0.1}, "dropout must be in [0, 1), got -0.1"),
    ({"norm": "ln", "micro_batch": 4}, "micro_batch applies to BatchNorm only, not norm='ln'"),
    ({"micro_batch": 0}, "micro_batch must be a positive int or None, got 0"),
    ({"groups": True}, "groups must be a positive int, got True"),  # a bool is an int to isinstance
    ({"copies": True}, "copies must be a positive int, got True"),
    ({"micro_batch": True}, "micro_batch must be a positive int or None, got True"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError) as error:
        Net(**kwargs)
    assert message in str(error.value)


@pytest.mark.parametrize("micro_batch", [1, 2, 16])
def test_ghost_batchnorm_in_one_pass_equals_gradient_accumulation_over_micro_batches(tiny, micro_batch):
    """One step of Net(micro_batch=m) over 128 digits gives the loss, every gradient and the running statistics that
    128 / m forward and backward passes of plain BatchNorm give (dropout off: the two draw their masks differently).
    In float64, so that the tolerance is tight: float32 rounding, amplified through eight layers, differs by ~1e-5."""
    (train_x, train_y), _ = tiny
    batch = [(train_x[:128].double(), train_y[:128, None])]  # one seed: (batch, 1) labels
    results = []
    for ghost, accumulate in ((micro_batch, None), (None, micro_batch)):
        torch.manual_seed(0)
        model = Net("bn", dropout=0.0, micro_batch=ghost).double()
        optimizer = utils.make_optimizer(model, 0.05)
        scheduler = utils.make_scheduler(optimizer, 0.05, 10)
        [loss], _ = utils.train_epoch(model, optimizer, scheduler, batch, accumulation=accumulate)
        results.append((loss, {n: p.grad for n, p in model.named_parameters()}, model.state_dict()))
    (ghost_loss, ghost_grads, ghost_state), (loss, grads, state) = results
    assert ghost_loss == pytest.approx(loss, rel=1e-12)
    for name, grad in grads.items():
        torch.testing.assert_close(ghost_grads[name], grad, rtol=1e-9, atol=1e-12, msg=f"gradient of {name}")
    buffers = [k for k in state if "running" in k or "num_batches" in k]
    assert len(buffers) == 18 and state["features.0.1.num_batches_tracked"] == 128 // micro_batch
    for name in buffers:
        torch.testing.assert_close(ghost_state[name], state[name], rtol=1e-9, atol=1e-12, msg=f"buffer {name}")


def test_a_digit_passes_through_the_layout_model_py_documents():
    """28 -> 26 -> 24 (two 3x3 convs) -> 12 (1x1 conv, 2x2 max-pool) -> 10 -> 8 -> 6 -> 6 (three 3x3 convs, a padded
    one) -> 1 (global average) -> 10 classes: the receptive field and the parameter count depend on these sizes."""
    sizes = []
    model = Net("bn")
    for layer in model.features:
        layer.register_forward_hook(lambda module, inputs, output: sizes.append(tuple(output.shape[1:])))
    model.eval()(torch.zeros(2, 1, 28, 28))
    assert sizes == [(8, 26, 26), (16, 24, 24), (8, 24, 24), (8, 12, 12), (16, 10, 10), (16, 8, 8), (16, 6, 6),
                     (16, 6, 6), (16, 1, 1), (10, 1, 1)]


def test_the_default_net_is_the_batchnorm_net():
    assert repr(Net()) == repr(Net("bn")) and all(type(m) is nn.BatchNorm2d for m in norm_layers(Net()))


def test_ghost_batchnorm_is_batchnorm_at_eval_and_when_the_group_is_the_whole_batch():
    x = torch.randn(8, 4, 5, 5)
    plain, ghost, whole = nn.BatchNorm2d(4), GhostBatchNorm2d(4, 2), GhostBatchNorm2d(4, 8)
    assert torch.equal(whole(x), plain(x))  # the very same computation, not a regrouped one that rounds differently
    assert torch.equal(whole.running_mean, plain.running_mean) and torch.equal(whole.running_var, plain.running_var)
    ghost.load_state_dict(plain.state_dict())
    ghost.eval(), plain.eval()
    torch.testing.assert_close(ghost(x), plain(x))
    ghost.train()
    groups = torch.cat([F.batch_norm(part, None, None, training=True) for part in x.split(2)])
    torch.testing.assert_close(ghost(x), groups, rtol=1e-5, atol=1e-5)
    ghost.eps = plain.eps = 0.5  # a changed eps reaches every group's batch_norm
    groups = torch.cat([F.batch_norm(part, None, None, training=True, eps=0.5) for part in x.split(2)])
    torch.testing.assert_close(ghost(x), groups, rtol=1e-5, atol=1e-5)
    odd = GhostBatchNorm2d(4, 3)  # 8 = 3 + 3 + 2: the last, smaller group is its own
    torch.testing.assert_close(odd(x), torch.cat([F.batch_norm(p, None, None, training=True) for p in x.split(3)]),
                               rtol=1e-5, atol=1e-5)


def test_the_fair_net_without_normalization_has_a_zero_bias_in_every_conv_and_kaiming_weights():
    utils.set_seed(1)
    net = Net("none", bias=True, init="kaiming")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is not None and torch.equal(m.bias, torch.zeros_like(m.bias)) for m in convs)
    for m in convs:  # Kaiming-normal, fan-in, ReLU gain: sd sqrt(2 / fan_in)
        fan_in = m.weight[0].numel()
        assert m.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.35 if m.weight.numel() < 100 else 0.15)
    with_norm = Net("bn", bias=True)  # only the convs no normalization follows: the 1x1 transition and the classifier
    assert [m.bias is not None for m in with_norm.modules() if isinstance(m, nn.Conv2d)] == [
        False, False, True, False, False, False, False, True]
    assert all(m.bias is None for norm in ("bn", "ln", "gn", "none") for m in Net(norm).modules()
               if isinstance(m, nn.Conv2d))  # the study's nets keep their bias-free convs


def test_kaiming_initialization_keeps_the_signal_that_the_default_one_loses_without_normalization(mnist):
    """What makes the control fair: at initialization, real digits reach the last conv at a scale near their own with
    Kaiming weights, and at a few thousandths of it with PyTorch's default init and no normalization."""
    (images, _), _ = mnist
    images = images[:512]
    for kwargs, low, high in (({}, 0.0, 0.01), ({"bias": True, "init": "kaiming"}, 0.1, 10.0)):
        for seed in (1, 2, 3):
            utils.set_seed(seed)
            signal = Net("none", dropout=0.0, **kwargs).eval().features[:-2](images)
            assert low < signal.std().item() / images.std().item() < high, (kwargs, seed)


def test_packing_keeps_the_bias_and_the_initialization():
    from model import pack, unpack
    utils.set_seed(1)
    nets = [Net("none", bias=True, init="kaiming") for _ in range(2)]
    x = torch.randn(3, 1, 28, 28)
    packed = pack([n.eval() for n in nets]).eval()
    assert torch.allclose(packed(x.repeat(1, 2, 1, 1))[:, 1], nets[1](x), atol=1e-6)
    assert all(n.bias and n.init == "kaiming" for n in unpack(packed))


@pytest.mark.parametrize("kwargs, message", [({"init": "xavier"}, "unknown init 'xavier'; allowed: 'default', 'kaiming'"),
                                             ({"bias": 1}, "bias must be True or False, got 1")])
def test_a_wrong_bias_or_initialization_is_named_with_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Net("none", **kwargs)
