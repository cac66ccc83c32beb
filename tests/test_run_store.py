"""The run store and the parallel runs: a stored run is the run that was trained, reused only when nothing that
decides its numbers has changed, and a worker's run equals the same run in this process."""
import hashlib
import inspect
import io
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest
import torch

import store
from helpers import job_of, key_of, load_run, save_run
import utils
from model import Net

GN = {"name": "GN", "model": {"norm": "gn"}}
COMMITTED_RUNS = Path(__file__).resolve().parent.parent / "runs"


def tiny_spec(**changes):
    """A run of one epoch on 512 training images (tested on all 10,000 test images, or on 256 under tiny_store)."""
    spec = store.run_spec(GN, seed=1, epochs=1, batch_size=64, train_size=512)
    return {**spec, **changes}


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.usefixtures("tiny_store")
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
                                    {"device": "cuda"}, {"validation": 128}])
def test_anything_that_changes_the_result_changes_the_key(change):
    assert store.run_key(tiny_spec(**change), "code") != store.run_key(tiny_spec(), "code")


def test_the_display_name_does_not_change_the_key():
    assert store.run_key(tiny_spec(name="GroupNorm"), "code") == store.run_key(tiny_spec(), "code")


@pytest.mark.usefixtures("tiny_store")
def test_a_changed_spec_trains_anew_and_retrain_forces_it(tmp_path, capsys):
    store.train_or_load([tiny_spec()], tmp_path)
    store.train_or_load([tiny_spec(seed=2)], tmp_path)
    assert capsys.readouterr().out.count("trained now") == 2
    store.train_or_load([tiny_spec()], tmp_path, retrain=True)
    assert "trained now" in capsys.readouterr().out
    assert len(list(tmp_path.glob("*.json"))) == 2


@pytest.mark.usefixtures("tiny_store")
@pytest.mark.parametrize("damage", ["truncate json", "garble weights", "delete weights", "wrong key"])
def test_a_damaged_entry_is_reported_and_trained_again(tmp_path, capsys, damage):
    [(_, history)] = store.train_or_load([tiny_spec()], tmp_path)
    key = key_of(tiny_spec(), tmp_path)
    entry = tmp_path / f"{key}.json"
    weights = tmp_path / json.loads(entry.read_text())["weights_file"]
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
    assert load_run(tmp_path, tiny_spec()) is not None


def test_weights_without_their_json_are_an_unfinished_entry_not_a_run(tmp_path):
    """A run killed between writing the weights and the JSON leaves no entry that load_run would use."""
    (tmp_path / f"{key_of(tiny_spec(), tmp_path)}.0123456789abcdef.pt").write_bytes(b"half")
    assert load_run(tmp_path, tiny_spec()) is None


@pytest.mark.slow
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
    assert {e["trained_on"] for e in entries} == {"CPU (1 thread)"}


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
        loader = utils.training_batches(train_x[:128], train_y[:128], 64, [torch.Generator()], augmented=False)
        utils.train_epoch(model, optimizer, scheduler, loader, accumulation=micro_batch_size)
        models.append(model)
    weights = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in models]
    assert torch.allclose(weights[0], weights[1], atol=1e-5) == equal


def committed_entries():
    return [json.loads(path.read_text()) for path in sorted(COMMITTED_RUNS.glob("*.json"))]


def test_every_committed_entry_is_found_under_the_key_of_its_own_spec(tmp_path):
    """A refactor must not change a key by accident: each stored run and range test is where today's code, by the
    fingerprints it computes (not by the committed cache, which a copy without it leaves out), says it is; otherwise
    the notebook would silently retrain it."""
    (tmp_path / "fingerprints").write_text(json.dumps(
        dict(json.loads((COMMITTED_RUNS / "fingerprints").read_text()), cache={})))
    entries = committed_entries()
    assert len(entries) > 100, "the committed run store is not here"
    jobs = store.keyed([entry["spec"] for entry in entries], tmp_path)
    for entry, (_, key, code) in zip(entries, jobs):
        assert (key, code) == (entry["key"], entry["code_version"]), f"{entry['key']} is not found by its spec"


def test_a_key_is_the_spec_without_its_name_and_the_fingerprint_name_hashed_as_every_committed_entry_was():
    """The key's own recipe on each committed entry, given the fingerprint name it was stored with."""
    for entry in committed_entries():
        assert store.run_key(entry["spec"], entry["code_version"]) == entry["key"]
        assert store.run_key(dict(entry["spec"], name="another name"), entry["code_version"]) == entry["key"]


def mutated(value):
    """Another value of the same JSON type: what a changed setting looks like in a spec."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, dict):
        return {**value, "changed": 1}
    raise TypeError(f"no mutation for {value!r}")


@pytest.mark.parametrize("spec", [tiny_spec(), store.lr_range_spec(GN, seed=1, train_size=512)],
                         ids=["run", "range test"])
def test_every_field_of_a_spec_but_the_display_name_changes_its_key(spec):
    """Built from the spec itself, so that a field added later is covered too; and the fingerprint's name."""
    for field, value in spec.items():
        changed = store.run_key({**spec, field: mutated(value)}, "code")
        assert (changed == store.run_key(spec, "code")) == (field == "name"), f"field {field!r}"
    assert store.run_key(spec, "other code") != store.run_key(spec, "code")


def test_the_spec_holds_every_setting_train_model_takes():
    """A setting that train_model takes but the spec lacks would let the store hand back a stale run after it
    changed (as L2_LAMBDA or BATCH_SIZE would, left out of the spec)."""
    taken = set(inspect.signature(utils.train_model).parameters) - {"config", "data", "progress", "seeds"}
    spec = tiny_spec()
    assert "seed" in spec  # a stored run is one of the seeds train_model trains together
    assert taken <= set(spec), f"missing from run_spec: {taken - set(spec)}"
    assert {"name", "model", "l1", "l2"} <= set(spec)  # the config's fields
    assert "train_size" in spec  # train_and_store slices the data by it


def test_the_same_run_twice_is_refused_with_the_spec_named(tmp_path):
    with pytest.raises(ValueError, match="the same run twice .*'seed': 1.* it would count twice"):
        store.train_or_load([tiny_spec(), tiny_spec(seed=2), tiny_spec(name="GN again")], tmp_path)
    assert not list(tmp_path.iterdir())  # refused before anything trained


def test_weights_are_renamed_into_place_before_the_json_and_neither_is_written_in_place(tmp_path, monkeypatch):
    model = Net("gn")
    renames, replace = [], os.replace
    monkeypatch.setattr(store.os, "replace", lambda src, dst: (renames.append((Path(src), Path(dst))),
                                                                replace(src, dst)))
    key = save_run(tmp_path, tiny_spec(), model, {"seconds": [1.0]}, "CPU")
    entry = json.loads((tmp_path / f"{key}.json").read_text())
    assert [dst.name for _, dst in renames if dst.name != "fingerprints"] == [entry["weights_file"], f"{key}.json"]
    assert all(src.parent == tmp_path and src.name.startswith(".") and src.name.endswith(".tmp") for src, _ in renames)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([entry["weights_file"], f"{key}.json",
                                                                 "fingerprints"])


def test_a_killed_save_leaves_a_temporary_file_that_is_never_read_and_is_cleared_later(tmp_path):
    key = key_of(tiny_spec(), tmp_path)
    stale = tmp_path / f".{key}.json.12345.tmp"
    stale.write_text('{"key": "half a json')
    assert load_run(tmp_path, tiny_spec()) is None  # not read as an entry
    old = time.time() - 2 * store.STALE_AFTER_SECONDS
    os.utime(stale, (old, old))
    fresh = tmp_path / f".{key}.pt.999.tmp"  # a save in progress right now: left alone
    fresh.write_bytes(b"")
    save_run(tmp_path, tiny_spec(seed=2), Net("gn"), {"seconds": [1.0]}, "CPU")
    assert not stale.exists() and fresh.exists()


@pytest.mark.parametrize("first", ["A", "B"])
def test_two_writers_of_one_key_leave_an_entry_whose_json_and_weights_belong_together(tmp_path, monkeypatch, first):
    """Writer A stops right after its weights are in place; writer B saves the same key completely; then A ends.
    Either way round, the entry loads, with the weights its JSON names."""
    torch.manual_seed(1)
    models = {"A": Net("gn"), "B": Net("gn")}
    paused, resume, replace = threading.Event(), threading.Event(), os.replace

    def pausing_replace(src, dst):
        replace(src, dst)
        if threading.current_thread().name == first and dst.endswith(".pt"):
            paused.set()
            resume.wait(10)

    monkeypatch.setattr(store.os, "replace", lambda src, dst: pausing_replace(str(src), str(dst)))
    other = "B" if first == "A" else "A"
    writer = threading.Thread(target=save_run, name=first,
                              args=(tmp_path, tiny_spec(), models[first], {"seconds": [1.0]}, first))
    writer.start()
    assert paused.wait(10)
    save_run(tmp_path, tiny_spec(), models[other], {"seconds": [1.0]}, other)
    resume.set()
    writer.join()
    model, entry = load_run(tmp_path, tiny_spec())
    assert same_weights(model, models[entry["trained_on"]])  # the JSON's writer is the weights' writer


@pytest.mark.usefixtures("tiny_store")
def test_an_entry_copied_under_another_key_is_reported_as_such(tmp_path, capsys):
    store.train_or_load([tiny_spec()], tmp_path)
    key, other = key_of(tiny_spec(), tmp_path), key_of(tiny_spec(seed=2), tmp_path)
    (tmp_path / f"{other}.json").write_text((tmp_path / f"{key}.json").read_text())
    assert load_run(tmp_path, tiny_spec(seed=2)) is None
    assert f"it holds the run of key {key}, not {other}: copied or renamed" in capsys.readouterr().out


def test_store_files_get_the_permissions_of_any_new_file_not_owner_only(tmp_path):
    store.write_atomically(tmp_path / "entry.json", b"{}")
    (tmp_path / "plain.json").write_bytes(b"{}")
    assert (tmp_path / "entry.json").stat().st_mode == (tmp_path / "plain.json").stat().st_mode


@pytest.mark.usefixtures("tiny_store")
def test_a_file_system_that_refuses_chmod_loses_no_run(tmp_path, monkeypatch, capsys):
    def refuse(path, mode):
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(store.os, "chmod", refuse)
    [(trained, history)] = store.train_or_load([tiny_spec()], tmp_path)
    [(loaded, loaded_history)] = store.train_or_load([tiny_spec()], tmp_path)
    assert "loaded from the store" in capsys.readouterr().out
    assert loaded_history == history and same_weights(loaded, trained)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind either


def test_a_run_s_log_line_and_a_call_s_summary_say_exactly_what_ran_where():
    spec = tiny_spec(seed=3, micro_batch_size=16)
    entry = {"history": {"test_acc": [97.123, 98.456]}, "trained_at": "2026-12-07 10:00:00",
             "trained_on": "CPU (1 thread)", "seconds": 12.6}
    assert store.describe_run(spec, entry, trained_now=True) == \
        "      GN seed 3: final test acc  98.46% | trained now on CPU (1 thread), 13 s"
    assert store.describe_run(spec, entry, trained_now=False, micro_batch=True) == (
        "      GN micro-batch  16 seed 3: final test acc  98.46% | loaded from the store (trained 2026-12-07 10:00:00 "
        "on CPU (1 thread), 13 s)")
    entries = [(None, dict(entry, trained_on=where, seconds=s))
               for where, s in (("GPU", 5.2), ("CPU", 7.0), ("CPU", 1))]
    assert store.summary(entries, trained=1) == \
        "3 runs: 2 loaded from the store, 1 trained now; trained on CPU and GPU, 13 s of training in all"
    assert store.summary(entries[1:], trained=0) == \
        "2 runs: 2 loaded from the store; trained on CPU, 8 s of training in all"


def test_a_cpu_trains_one_seed_per_worker_and_a_gpu_every_seed_in_one():
    assert store.default_workers("cpu") == (os.cpu_count() or 1) and store.default_workers("cuda") == 1
    assert store.default_together("cpu") == 1 and store.default_together("cuda") is None
    gpu = torch.device("cuda", 0)
    assert store.default_workers(gpu) == 1 and store.default_together(gpu) is None


def test_train_or_load_trains_what_is_missing_stores_it_and_says_so_line_by_line(tmp_path, capsys, tiny_store):
    """In this process on 128 training and 256 test digits: the first call trains three runs in two groups (two seeds
    together, BN at a micro-batch alone) with a progress bar on stdout and a line per run, the second loads them and
    says so in one line, `retrain` trains them again; every call returns the stored runs in the order asked."""
    specs = [tiny_spec(seed=2, train_size=128), tiny_spec(seed=1, train_size=128),
             tiny_spec(seed=1, train_size=128, micro_batch_size=32, name="BN", model={"norm": "bn"})]
    first = store.train_or_load(specs, tmp_path, together=None)
    out = capsys.readouterr().out
    bar = out.split("\n")[-2].split("\r")[-1]
    assert bar.startswith("training 3 runs in 2 group(s) on 1 worker(s): 100%|####") and len(bar) == 110, bar
    assert " 3/3 [" in bar and ("run/s]" in bar or "s/run]" in bar)
    entries = stored_entries(tmp_path, specs)
    lines = [store.describe_run(spec, entry, trained_now=True, micro_batch=True) for spec, entry in zip(specs, entries)]
    assert sorted(segment.split("\r")[-1] for segment in out.split("\n")[:-2]) == sorted(lines)
    assert [h["seed"] for _, h in first] == [2, 1, 1] and [h["micro_batch_size"] for _, h in first] == [64, 64, 32]
    assert [h for _, h in first] == [dict(e["history"], name=e["spec"]["name"], trained_on=stored_on(e))
                                     for e in entries]

    second = store.train_or_load(specs, tmp_path, verbose=False)
    seconds = sum(e["seconds"] for e in entries)
    alone = entries[2]["trained_on"]  # the two seeds trained together say "<alone>, 2 seeds together"
    assert capsys.readouterr().out == f"3 runs: 3 loaded from the store; trained on {alone} and {alone}, 2 seeds " \
                                      f"together, {seconds:.0f} s of training in all\n"
    assert all(same_weights(a, b) for (a, _), (b, _) in zip(first, second))
    assert [h for _, h in second] == [h for _, h in first]

    store.train_or_load(specs[:1], tmp_path, retrain=True, verbose=False)
    assert capsys.readouterr().out.split("\n")[-2].startswith("1 runs: 0 loaded from the store, 1 trained now; ")

    entries = stored_entries(tmp_path, specs)
    for asked, sweep in ((specs, True), (specs[:2], False)):  # a line names its micro-batch when any run differs
        store.train_or_load(asked, tmp_path)
        assert capsys.readouterr().out.splitlines() == [
            store.describe_run(spec, entry, trained_now=False, micro_batch=sweep)
            for spec, entry in zip(asked, entries)]
        assert ("micro-batch" in store.describe_run(specs[0], entries[0], False, sweep)) == sweep
    store.train_or_load(specs, tmp_path, retrain=True, together=1, verbose=False)
    assert "training 3 runs in 3 group(s) on 1 worker(s): 100%" in capsys.readouterr().out


def test_a_run_that_cannot_be_read_back_after_training_stops_the_call(tmp_path, monkeypatch, tiny_store):
    monkeypatch.setattr(store, "load_entry", lambda *args, **kwargs: None)
    with pytest.raises(RuntimeError, match=f"^run store {re.escape(str(tmp_path))}: a run just trained could not be "
                                           "read back$"):
        store.train_or_load([tiny_spec(train_size=128)], tmp_path, verbose=False)
    assert len(list(tmp_path.glob("*.json"))) == 1  # it was stored


def stored_entries(folder, specs):
    return [json.loads((folder / f"{key_of(spec, folder)}.json").read_text()) for spec in specs]


def stored_on(entry):
    return f"{entry['trained_on']}, torch {entry['torch']}"


class NotAStateDict(dict):
    """A dict of the right tensors, pickled as a class of its own: what a crafted weights file can hold."""


def test_a_saved_entry_is_exactly_what_it_promises_and_loads_onto_the_device_asked(tmp_path):
    """The JSON (one-space indented) holds the key, spec, code version, where and when, seconds, torch, the weights
    file `<key>.<16 hex of its sha256>.pt` and the history; a store folder is made with its parents; a run loads onto
    the device asked, under the display name asked (the name keys nothing)."""
    history = {"seconds": [1.25, 2.5], "test_acc": [97.0]}
    key = save_run(tmp_path / "a" / "b", tiny_spec(), Net("gn"), history, "CPU (1 thread)")
    path = tmp_path / "a" / "b" / f"{key}.json"
    entry = json.loads(path.read_text())
    assert path.read_text() == json.dumps(entry, indent=1)
    weights = (path.parent / entry["weights_file"]).read_bytes()
    digest = hashlib.sha256(weights).hexdigest()
    assert entry == {"key": key, "spec": tiny_spec(), "code_version": job_of(tiny_spec(), tmp_path / "a" / "b")[2],
                     "trained_on": "CPU (1 thread)", "processor": utils.processor_name(),
                     "trained_at": entry["trained_at"], "seconds": 3.75,
                     "torch": torch.__version__, "weights_file": f"{key}.{digest[:16]}.pt", "weights_sha256": digest,
                     "history": history}
    assert re.fullmatch(r"20\d\d-[01]\d-[0-3]\d [0-2]\d:[0-5]\d:[0-5]\d", entry["trained_at"])
    model, loaded = load_run(path.parent, dict(tiny_spec(), name="GN, 4 groups"), device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert loaded["history"]["name"] == "GN, 4 groups"
    assert loaded["history"]["trained_on"] == f"CPU (1 thread), torch {torch.__version__}"


def test_a_weights_file_that_would_run_code_is_refused_even_with_its_hash(tmp_path, capsys):
    """torch.load with weights_only: a pickle of another class is not unpickled, though the JSON vouches for it."""
    key = save_run(tmp_path, tiny_spec(), Net("gn"), {"seconds": [1.0]}, "CPU")
    path = tmp_path / f"{key}.json"
    entry = json.loads(path.read_text())
    buffer = io.BytesIO()
    torch.save(NotAStateDict(Net("gn").state_dict()), buffer)
    (tmp_path / entry["weights_file"]).write_bytes(buffer.getvalue())
    path.write_text(json.dumps(dict(entry, weights_sha256=hashlib.sha256(buffer.getvalue()).hexdigest())))
    assert load_run(tmp_path, tiny_spec()) is None
    out = capsys.readouterr().out
    assert out.startswith(f"run store: entry {path} is unreadable (UnpicklingError: ") and "NotAStateDict" in out
    assert out.endswith("); training it again\n")


def test_a_renamed_entry_s_message_names_both_keys_and_what_happens_next(tmp_path, capsys):
    key = save_run(tmp_path, tiny_spec(), Net("gn"), {"seconds": [1.0]}, "CPU")
    other = key_of(tiny_spec(seed=2), tmp_path)
    (tmp_path / f"{key}.json").rename(tmp_path / f"{other}.json")
    assert load_run(tmp_path, tiny_spec(seed=2)) is None
    assert capsys.readouterr().out == (
        f"run store: entry {tmp_path / f'{other}.json'} is unreadable (ValueError: it holds the run of key {key}, not "
        f"{other}: copied or renamed from another entry); training it again\n")


def test_a_temporary_file_exactly_as_old_as_the_limit_is_kept(tmp_path, monkeypatch):
    tmp = tmp_path / ".x.json.1.tmp"
    tmp.write_bytes(b"")
    os.utime(tmp, (1_000_000, 1_000_000))
    monkeypatch.setattr(store.time, "time", lambda: 1_000_000 + store.STALE_AFTER_SECONDS)
    store.remove_stale_temporaries(tmp_path)
    assert tmp.exists()
    monkeypatch.setattr(store.time, "time", lambda: 1_000_001 + store.STALE_AFTER_SECONDS)
    store.remove_stale_temporaries(tmp_path)
    assert not tmp.exists()


def test_a_spec_s_defaults_are_the_study_s():
    assert store.run_spec({"name": "LN"}, 3, 20) == {
        "name": "LN", "model": {}, "l1": 0.0, "l2": 0.0, "seed": 3, "epochs": 20, "batch_size": 128,
        "micro_batch_size": 128, "max_lr": 0.1, "train_size": 60_000, "device": "cpu"}
    spec = store.run_spec({"name": "BN + L2", "model": {"norm": "bn"}, "l1": 1e-5, "l2": 1e-4}, 1, 2, batch_size=64,
                          micro_batch_size=16)
    assert (spec["l1"], spec["l2"], spec["batch_size"], spec["micro_batch_size"]) == (1e-5, 1e-4, 64, 16)


def test_a_validation_run_trains_on_none_of_its_held_out_images_and_is_tested_on_them_not_on_the_test_set(
        tmp_path, tiny, tiny_store):
    spec = store.run_spec(GN, 1, 1, batch_size=32, train_size=384, validation=128)
    [(_, history)] = store.train_or_load([spec], tmp_path)
    (train_x, train_y), _ = tiny  # 512 images: the first 384 train, the last 128 test
    [(_, expected)] = utils.train_model(GN, ((train_x[:384], train_y[:384]), (train_x[-128:], train_y[-128:])), 1,
                                        batch_size=32, progress=False)
    assert history["test_acc"] == expected["test_acc"] and history["train_loss"] == expected["train_loss"]
    with pytest.raises(ValueError, match="train_size 50001 \\+ validation 10000 exceed .* lower train_size to 50000"):
        store.run_spec(GN, 1, 1, train_size=50_001, validation=10_000)


def test_specs_whose_fields_come_in_another_order_still_train_together():
    spec = tiny_spec()
    reordered = dict(reversed(list(tiny_spec(seed=2).items())))
    jobs = [(spec, "a", "code"), (reordered, "b", "code")]
    assert store.seed_groups(jobs) == [jobs]


def test_histories_round_trip_through_a_new_folder_as_one_space_indented_json(tmp_path):
    histories = [{"name": "BN", "test_acc": [98.5, 99.1]}, {"name": "LN", "test_acc": [98.0]}]
    path = tmp_path / "new" / "folder" / "history.json"
    store.save_histories(histories, path)
    store.save_histories(histories, path)  # again: the folder exists now
    assert path.read_text() == json.dumps(histories, indent=1) and store.load_histories(path) == histories


def test_a_failed_write_leaves_no_temporary_file_and_raises(tmp_path):
    with pytest.raises(TypeError):
        store.write_atomically(tmp_path / "entry.json", "text, not bytes")
    assert list(tmp_path.iterdir()) == []


def test_the_data_folder_asked_for_is_the_one_read_onto_the_run_s_device(tmp_path, monkeypatch, tiny):
    asked = []
    monkeypatch.setattr(store, "cached_mnist", lambda root, device: (asked.append((root, device)), tiny)[1])
    store.train_or_load([tiny_spec(train_size=128)], tmp_path, data_dir="elsewhere", verbose=False)
    assert asked == [("elsewhere", "cpu"), ("elsewhere", torch.device("cpu"))]  # the fingerprint's, then the run's
