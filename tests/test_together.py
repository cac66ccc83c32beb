"""Seeds trained together: K seeds of a configuration as one Net of K copies compute exactly what each seed trained
alone computes, a stored run stays one seed's plain Net, and the packing pays on a GPU (operators per seed-step)."""
import json
import math
from pathlib import Path

import pytest
import torch

import benchmark
import store
import utils
from model import Dropout, Net, pack, unpack

CONFIGS = {
    "BN": {"model": {"norm": "bn"}}, "BN + L1": {"model": {"norm": "bn"}, "l1": 5e-4},
    "BN + L2": {"model": {"norm": "bn"}, "l2": 5e-3}, "LN": {"model": {"norm": "ln"}},
    "GN": {"model": {"norm": "gn"}}, "ghost BN": {"model": {"norm": "bn"}, "micro_batch_size": 16},
}


@pytest.fixture
def float64():
    """Float64 throughout, so that 1e-10 separates a different computation from rounding."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("dropout", [0.05, 0.0], ids=["dropout", "no dropout"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_seeds_trained_together_equal_each_seed_trained_alone(tiny, float64, name, dropout):
    (train_x, train_y), (test_x, test_y) = tiny
    data = ((train_x[:128].double(), train_y[:128]), (test_x[:64].double(), test_y[:64]))  # 4 steps of 32
    settings = dict(CONFIGS[name])
    micro_batch_size = settings.pop("micro_batch_size", None)
    config = {"name": name, **settings, "model": {**settings["model"], "dropout": dropout}}
    together = utils.train_model(config, data, 1, batch_size=32, seeds=(1, 2, 3), progress=False,
                                 micro_batch_size=micro_batch_size)
    for seed, (model, history) in zip((1, 2, 3), together):
        [(alone_model, alone)] = utils.train_model(config, data, 1, batch_size=32, seeds=(seed,), progress=False,
                                                   micro_batch_size=micro_batch_size)
        assert history["seed"] == alone["seed"] == seed and history["seeds_together"] == 3
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert history[key] == pytest.approx(alone[key], rel=1e-10, abs=1e-10), key
        assert history["final"]["misclassified"] == alone["final"]["misclassified"]
        state, alone_state = model.state_dict(), alone_model.state_dict()
        assert type(model) is Net and model.copies == 1 and state.keys() == alone_state.keys()
        assert any("running_mean" in k for k in state) == (settings["model"]["norm"] == "bn")
        for key, value in state.items():  # weights and BatchNorm's running statistics
            torch.testing.assert_close(value, alone_state[key], rtol=1e-10, atol=1e-10, msg=key)
    assert together[0][1]["test_loss"] != together[1][1]["test_loss"]  # three different seeds


def test_a_diverging_seed_does_not_touch_the_others(tiny, float64):
    """As in the learning-rate range test, where one seed's loss goes to inf and NaN while the others train on: with
    seed 2's first conv NaN, as a diverged seed's weights end up, seeds 1 and 3 beside it train exactly as alone."""
    (train_x, train_y), _ = tiny
    train_x, train_y = train_x[:128].double(), train_y[:128]

    def train(seeds):
        nets = []
        for seed in seeds:
            utils.set_seed(seed)
            nets.append(Net("bn"))
            if seed == 2:
                nets[-1].features[0][0].weight.data.fill_(math.nan)
        model, generators = pack(nets), [utils.seed_stream(seed, "cpu") for seed in seeds]
        model.draw_from(generators)
        optimizer = utils.make_optimizer(model, 0.1)
        losses, _ = utils.train_epoch(model, optimizer, utils.make_scheduler(optimizer, 0.1, 4),
                                      utils.training_batches(train_x, train_y, 32, generators))
        return losses, unpack(model)

    losses, nets = train((1, 2, 3))
    assert math.isfinite(losses[0]) and math.isfinite(losses[2]) and not math.isfinite(losses[1])
    for k, seed in ((0, 1), (2, 3)):
        [alone_loss], [alone] = train((seed,))
        assert losses[k] == pytest.approx(alone_loss, rel=1e-10)
        for key, value in nets[k].state_dict().items():
            torch.testing.assert_close(value, alone.state_dict()[key], rtol=1e-10, atol=1e-10, msg=key)


def test_a_packed_net_computes_what_each_of_its_plain_nets_computes():
    nets = []
    for seed, norm in ((1, "gn"), (2, "gn")):
        torch.manual_seed(seed)
        nets.append(Net(norm, dropout=0.0))
    packed = pack(nets)
    assert sum(p.numel() for p in packed.parameters()) == 2 * sum(p.numel() for p in nets[0].parameters())
    x = torch.randn(6, 2, 28, 28)
    for mode in ("train", "eval"):
        out = getattr(packed, mode)()(x)
        assert out.shape == (6, 2, 10)
        for k, net in enumerate(nets):
            torch.testing.assert_close(out[:, k], getattr(net, mode)()(x[:, k:k + 1]), rtol=1e-5, atol=1e-5)
    for net, back in zip(nets, unpack(packed)):
        assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), back.state_dict().values()))
    with pytest.raises(ValueError, match=r"^pack\(\) takes plain nets \(copies=1\) that differ in their weights only$"):
        pack([Net("gn"), Net("ln")])


def test_dropout_masks_come_from_each_copys_own_generator():
    x = torch.ones(4, 16, 3, 3)
    layer = Net("bn", dropout=0.5, copies=2).features[0][3]  # the first block's dropout: 2 x 8 channels
    layer.generators = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    both = layer(x)
    layer.generators = [torch.Generator().manual_seed(2), torch.Generator().manual_seed(7)]
    swapped = layer(x)
    assert torch.equal(both[:, 8:], swapped[:, :8])  # seed 2's masks, whichever place it has
    assert set(both.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - p)
    with pytest.raises(ValueError, match="a net of 2 copies needs 2 generators, got 1"):
        Net("bn", copies=2).draw_from([torch.Generator()])


def test_nets_packed_unpacked_and_dropped_out_stay_on_the_device_they_are_given():
    """The meta device stands in for a GPU here: a net made on it packs, unpacks and draws its dropout masks there
    (a CPU tensor anywhere on the way fails loudly), so the device-agnostic path runs in a CPU test."""
    nets = [Net("bn").to("meta") for _ in range(2)]
    packed = pack(nets)
    assert {p.device.type for p in packed.parameters()} == {"meta"}
    assert {p.device.type for net in unpack(packed) for p in net.parameters()} == {"meta"}
    assert packed.train()(torch.empty(3, 2, 28, 28, device="meta")).device.type == "meta"


def test_dropout_keeps_a_unit_whose_noise_equals_p_and_at_p_0_draws_nothing():
    """Kept where uniform noise in [0, 1) is at least p: keeps with probability exactly 1 - p. At p = 0 it is the
    identity and leaves the seed's random stream where it was, so the next layer's masks do not move."""
    x = torch.ones(1, 8, 3, 3)
    p = torch.rand(1, 8, 3, 3, generator=torch.Generator().manual_seed(5))[0, 0, 0, 0].item()
    layer = Dropout(p, 1).train()
    layer.generators = [torch.Generator().manual_seed(5)]
    assert layer(x)[0, 0, 0, 0] == 1 / (1 - p)
    off = Dropout(0.0, 1).train()
    off.generators = [torch.Generator().manual_seed(5)]
    state = off.generators[0].get_state()
    assert torch.equal(off(x), x) and torch.equal(off.generators[0].get_state(), state)


@pytest.mark.slow
def test_missing_seeds_train_together_and_are_stored_one_seed_each(tmp_path, capsys):
    config = {"name": "GN", "model": {"norm": "gn"}}
    specs = [store.run_spec(config, seed, epochs=1, batch_size=64, train_size=512) for seed in (1, 2, 3)]
    store.train_or_load(specs[:1], tmp_path)
    capsys.readouterr()
    runs = store.train_or_load(specs, tmp_path)
    out = capsys.readouterr().out
    assert "GN seed 1: " in out and out.count("loaded from the store") == 1 and out.count("trained now") == 2
    assert "training 2 runs in 1 group(s)" in out
    entries = {json.loads(p.read_text())["spec"]["seed"]: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert "together" not in entries[1]["trained_on"]
    assert entries[2]["trained_on"].endswith(", 2 seeds together") and entries[3]["history"]["seeds_together"] == 2
    for (model, history), spec in zip(runs, specs):
        assert type(model) is Net and model.copies == 1 and history["seed"] == spec["seed"]
        plain = Net("gn")
        plain.load_state_dict(torch.load(tmp_path / entries[spec["seed"]]["weights_file"], weights_only=True))


def test_seed_groups_join_runs_that_differ_in_their_seed_only_and_keep_the_order():
    gn, bn = {"name": "GN", "model": {"norm": "gn"}}, {"name": "BN", "model": {"norm": "bn"}}
    jobs = [(store.run_spec(config, seed, 1), f"key {seed}", "code") for seed in (1, 2, 3) for config in (gn, bn)]
    assert [[s["seed"] for s, _, _ in group] for group in store.seed_groups(jobs)] == [[1, 2, 3], [1, 2, 3]]
    assert [group[0][0]["name"] for group in store.seed_groups(jobs)] == ["GN", "BN"]
    assert [[s["seed"] for s, _, _ in group] for group in store.seed_groups(jobs, 2)] == [[1, 2], [3], [1, 2], [3]]


def test_every_run_is_fp32_with_tf32_off():
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    utils.set_seed(1)
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_each_step_uses_the_learning_rate_and_momentum_the_notebook_states(tiny):
    """OneCycleLR cycles the momentum against the learning rate: 0.95 at the start, 0.85 at the peak learning rate
    (step 4 of 20: a fifth), 0.95 again at the end; the parameters cell says so."""
    model = Net("bn")
    optimizer = utils.make_optimizer(model, 0.1)
    scheduler = utils.make_scheduler(optimizer, 0.1, 20)
    settings = [(optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["momentum"])]  # what the next step uses
    (x, y), _ = tiny
    for _ in range(5):
        utils.train_epoch(model, optimizer, scheduler, utils.training_batches(x[:128], y[:128], 32, [torch.Generator()]),
                          on_step=lambda: settings.append((optimizer.param_groups[0]["lr"],
                                                           optimizer.param_groups[0]["momentum"])))
    used = settings[:-1]
    lrs, momenta = zip(*used)
    peak = lrs.index(max(lrs))
    assert len(used) == 20 and lrs[0] == pytest.approx(0.01) and max(lrs) == pytest.approx(0.1) and peak == 3
    assert lrs[-1] == pytest.approx(0.1 / 1000)  # the last step ends the cosine at max_lr / 1000
    assert momenta[0] == pytest.approx(0.95) and momenta[peak] == pytest.approx(0.85)
    assert momenta[-1] == pytest.approx(0.95)
    assert all((a - b) * (c - d) <= 0 for (a, c), (b, d) in zip(used, used[1:]))  # they move in opposite ways
    notebook = json.loads((Path(__file__).resolve().parent.parent / "experiments.ipynb").read_text())
    parameters = next(c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))
    assert "Nesterov momentum cycled 0.95 -> 0.85 -> 0.95" in "".join(parameters["source"])


def test_an_optimizer_step_updates_all_parameters_in_a_few_foreach_operators():
    """On a GPU a step costs what it launches: SGD's foreach form updates every parameter tensor in one operator per
    operation and group, where a loop over the 20 tensors would launch about 90 (a counted fact of torch's SGD)."""
    model = Net("bn")
    optimizer = utils.make_optimizer(model, 0.1, l2=5e-4)
    for _ in range(2):  # the first step makes the momentum buffers
        model(torch.randn(4, 1, 28, 28)).sum().backward()
        with benchmark.OperatorCount() as counted:
            optimizer.step()
    assert len(list(model.parameters())) == 20 and counted.count < 20


@pytest.mark.slow
def test_seeds_together_dispatch_a_fraction_of_the_operators_per_seed_step(mnist):
    """What a GPU step costs, counted on the CPU: with 5 seeds together each kind's operators per seed-step are at most
    a third of one seed alone, with 10 (the study's seeds) at most a sixth."""
    for kind in benchmark.KINDS:
        alone, five, ten = (benchmark.count_operators(kind, seeds, "cpu", "data") for seeds in (1, 5, 10))
        assert five / 5 <= alone / 3 and ten / 10 <= alone / 6, kind
