"""The run store and the parallel runs: a stored run is the run that was trained, reused only when nothing that
decides its numbers has changed, and a worker's run equals the same run in this process."""
import json
from pathlib import Path

import pytest
import torch

import store
import utils

GN = {"name": "GN", "model": {"norm": "gn"}}


def tiny_spec(**changes):
    """A run of one epoch on 512 training images (tested on all 10,000 test images)."""
    spec = store.run_spec(GN, seed=1, epochs=1, batch_size=64, train_size=512)
    return {**spec, **changes}


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_loaded_run_has_the_history_and_weights_it_was_trained_with(tmp_path, capsys):
    [(trained, history)] = store.train_or_load([tiny_spec()], tmp_path)
    assert "trained now" in capsys.readouterr().out
    [(loaded, loaded_history)] = store.train_or_load([tiny_spec()], tmp_path)
    out = capsys.readouterr().out
    assert "loaded from the store (trained 20" in out and "on CPU" in out and "trained now" not in out
    assert loaded_history == history and same_weights(loaded, trained)
    entry = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert entry["spec"] == tiny_spec() and entry["seconds"] == pytest.approx(sum(history["seconds"]))


@pytest.mark.parametrize("change", [{"seed": 2}, {"epochs": 2}, {"train_size": 640}, {"micro_batch_size": 32},
                                    {"l1": 1e-4}, {"max_lr": 0.05}, {"model": {"norm": "gn", "groups": 2}},
                                    {"device": "cuda"}])
def test_anything_that_changes_the_result_changes_the_key(change):
    assert store.run_key(tiny_spec(**change)) != store.run_key(tiny_spec())


def test_the_display_name_does_not_change_the_key():
    assert store.run_key(tiny_spec(name="GroupNorm")) == store.run_key(tiny_spec())


def test_a_changed_spec_trains_anew_and_retrain_forces_it(tmp_path, capsys):
    store.train_or_load([tiny_spec()], tmp_path)
    store.train_or_load([tiny_spec(seed=2)], tmp_path)
    assert capsys.readouterr().out.count("trained now") == 2
    store.train_or_load([tiny_spec()], tmp_path, retrain=True)
    assert "trained now" in capsys.readouterr().out
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_code_changes_change_the_version_but_docstrings_and_comments_do_not():
    base = 'def f(x):\n    """Doc."""\n    return x + 1\n'
    reworded = 'def f(x):\n    """Other words."""\n    # a comment\n    return x + 1\n'
    changed = 'def f(x):\n    """Doc."""\n    return x + 2\n'
    assert store._without_docstrings(base) == store._without_docstrings(reworded)
    assert store._without_docstrings(base) != store._without_docstrings(changed)


def test_a_run_from_older_training_code_is_not_reused(tmp_path, capsys, monkeypatch):
    store.train_or_load([tiny_spec()], tmp_path)
    capsys.readouterr()

    original = utils.augment

    def augment(images, max_degrees=15.0, max_shift=2.0):  # a stronger augmentation: different training code
        return original(images, max_degrees, max_shift)

    code = tuple(augment if f is original else f for f in store.TRAINING_CODE)
    monkeypatch.setattr(store, "TRAINING_CODE", code)
    store.train_or_load([tiny_spec()], tmp_path)
    assert "trained now" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncate json", "garble weights", "delete weights", "wrong key"])
def test_a_damaged_entry_is_reported_and_trained_again(tmp_path, capsys, damage):
    [(_, history)] = store.train_or_load([tiny_spec()], tmp_path)
    key = store.run_key(tiny_spec())
    entry, weights = tmp_path / f"{key}.json", tmp_path / f"{key}.pt"
    if damage == "truncate json":
        entry.write_text(entry.read_text()[:100])
    elif damage == "garble weights":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "delete weights":
        weights.unlink()
    else:
        entry.write_text(entry.read_text().replace(key, "0" * len(key)))
    capsys.readouterr()
    [(_, again)] = store.train_or_load([tiny_spec()], tmp_path)
    out = capsys.readouterr().out
    assert f"entry {entry} is unreadable" in out and "trained now" in out
    assert again["test_loss"] == history["test_loss"]  # retrained to the same numbers, and stored whole again
    assert store.load_run(tmp_path, tiny_spec()) is not None


def test_weights_without_their_json_are_an_unfinished_entry_not_a_run(tmp_path):
    """A run killed between writing the weights and the JSON leaves no entry that load_run would use."""
    (tmp_path / f"{store.run_key(tiny_spec())}.pt").write_bytes(b"half")
    assert store.load_run(tmp_path, tiny_spec()) is None


def test_a_run_in_a_worker_equals_the_same_run_in_this_process(tmp_path):
    specs = [tiny_spec(), store.run_spec({"name": "BN + L1", "model": {"norm": "bn"}, "l1": 5e-5}, seed=3, epochs=1,
                                         batch_size=64, train_size=512)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two workers
    try:
        here = store.train_or_load(specs, tmp_path / "here", workers=1)
    finally:
        torch.set_num_threads(threads)
    parallel = store.train_or_load(specs, tmp_path / "workers", workers=2)
    for (model_here, h_here), (model_worker, h_worker) in zip(here, parallel):
        assert h_here["name"] == h_worker["name"]
        assert {k: v for k, v in h_here.items() if k != "seconds"} == {k: v for k, v in h_worker.items()
                                                                       if k != "seconds"}
        assert same_weights(model_here, model_worker)
    entries = [json.loads(p.read_text()) for p in (tmp_path / "workers").glob("*.json")]
    assert {e["trained_on"] for e in entries} == {"CPU (1 threads)"}


def test_workers_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        store.train_or_load([tiny_spec()], tmp_path, workers=0)


@pytest.mark.parametrize("norm, equal", [("ln", True), ("gn", True), ("bn", False)])
def test_micro_batches_give_the_whole_batch_step_for_ln_and_gn_only(tiny, norm, equal):
    (train_x, train_y), _ = tiny
    models = []
    for micro_batch_size in (None, 8):
        torch.manual_seed(0)
        model = utils.Net(norm, dropout=0.0)
        optimizer = utils.make_optimizer(model, 0.1)
        scheduler = utils.make_scheduler(optimizer, 0.1, 10)
        loader = utils.batches(train_x[:128], train_y[:128], 64)
        utils.train_epoch(model, optimizer, scheduler, loader, augment_batch=None, micro_batch_size=micro_batch_size)
        models.append(model)
    weights = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in models]
    assert torch.allclose(weights[0], weights[1], atol=1e-5) == equal


def test_every_committed_entry_is_found_under_the_key_of_its_own_spec():
    """A refactor must not change a key by accident: each stored run and range test is where run_key of its spec,
    under today's training code, says it is; otherwise the notebook would silently retrain it."""
    from probes import LR_RANGE_CODE
    entries = sorted((Path(__file__).resolve().parent.parent / "runs").glob("*.json"))
    assert entries, "the committed run store is empty"
    for path in entries:
        entry = json.loads(path.read_text())
        extra = LR_RANGE_CODE if entry["spec"].get("kind") == "lr_range_test" else ()
        assert store.run_key(entry["spec"], extra) == path.stem == entry["key"], f"{path.name} is not found by its spec"
