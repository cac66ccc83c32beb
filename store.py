"""The run store and parallel runs: a run's spec and key (a hash of the spec and of the training code), saving and
loading entries, and train_or_load, which loads what the store has and trains the rest in worker processes."""
import functools
import hashlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import joblib
import torch
from tqdm import tqdm

import fingerprint
from model import Net
from probes import divergence_step
from utils import (GPU_SETTINGS, device_name, first_training_images, load_mnist, lr_range_test, processor_name,
                   train_model, validation_split)


def run_spec(config, seed, epochs, *, batch_size=128, max_lr=0.1, device="cpu", train_size=60_000,
             micro_batch_size=None, validation=0):
    """Everything that sets a training run's result, as a JSON-ready dict: the run store's key and a worker's job.

    `config` is {"name", "model", "l1", "l2"} as for train_model; the run trains on the first `train_size`
    training images. Only the device type counts (cpu / cuda), not which GPU or how many threads. `validation` > 0
    tests on the last that many training images instead of the test set (utils.validation_split), and trains on the
    first `train_size` of the rest.
    """
    if validation and train_size + validation > 60_000:
        raise ValueError(f"train_size {train_size} + validation {validation} exceed MNIST's 60,000 training images; "
                         f"lower train_size to {60_000 - validation} or less")
    held_out = {"validation": validation} if validation else {}  # absent for test-set runs: their keys stay
    return {**held_out, "name": config["name"], "model": dict(config.get("model", {})), "l1": float(config.get("l1", 0.0)),
            "l2": float(config.get("l2", 0.0)), "seed": seed, "epochs": epochs, "batch_size": batch_size,
            "micro_batch_size": micro_batch_size or batch_size, "max_lr": float(max_lr), "train_size": train_size,
            "device": torch.device(device).type}


def lr_range_spec(config, seed, *, batch_size=128, lr_min=1e-3, lr_max=100.0, train_size=60_000, device="cpu"):
    """What sets a learning-rate range test's result, as a JSON-ready dict: its store key and its job."""
    return {"kind": "lr_range_test", "name": config["name"], "model": dict(config["model"]), "seed": seed,
            "batch_size": batch_size, "lr_min": float(lr_min), "lr_max": float(lr_max), "train_size": train_size,
            "device": torch.device(device).type}


def run_key(spec, code):
    """The store key of a run or range test: a hash of its spec (without the display name), of `code`, the name of
    the fingerprint its configuration matches (fingerprint.py), and on a GPU of the settings that only a GPU reads."""
    identity = {k: v for k, v in spec.items() if k != "name"}
    identity["code"] = code
    if spec["device"] == "cuda":
        identity["gpu"] = GPU_SETTINGS
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def keyed(specs, store, data_dir="data"):
    """[(spec, key, code)] of `specs`, in order: `code` the name of the fingerprint of today's code for the spec's
    configuration (computed only when the project's code changed since the store last saw it; MNIST is read from
    `data_dir` then), `key` its store key. Refuses the same run twice."""
    same = [run_key(spec, "") for spec in specs]
    for i, key in enumerate(same):
        if key in same[:i]:
            raise ValueError(f"the same run twice ({specs[i]}): it would count twice in every mean and test; pass "
                             f"each run once")
    codes = fingerprint.names(specs, store, lambda: cached_mnist(data_dir, "cpu"), write_atomically)
    return [(spec, run_key(spec, code), code) for spec, code in zip(specs, codes)]


STALE_AFTER_SECONDS = 600  # a temporary file this old is left over from a killed save (a save takes milliseconds)


def write_atomically(path, data):
    """Write bytes to `path` through a temporary file of this writer's own and a rename: readers see the old file or
    the new, never half of one, and two writers never write into the same temporary file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:  # mkstemp makes it owner-only; a store is read by others as any file is
            os.chmod(tmp, 0o666 & ~_umask())
        except OSError:  # a file system without permission bits (a mounted Drive, say): the bits are a courtesy
            pass
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask():
    """The process's file-creation mask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temporaries(store, older_than=STALE_AFTER_SECONDS):
    """Delete the temporary files (".<name>.<random>.tmp") that saves killed mid-write left in `store`; they are never
    read, and this keeps them from piling up."""
    now = time.time()
    for tmp in Path(store).glob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime > older_than:
                tmp.unlink()
        except FileNotFoundError:  # another process removed or renamed it meanwhile
            pass


def save_entry(store, job, result, *, trained_on, seconds, model=None):
    """Store a finished run or range test, `job` (spec, key, code) as keyed() gives it: `<key>.json` with its spec,
    `result` ({"history": ...} of a
    run, {"curve": ...} of a range test), the code's fingerprint name, when, where and on which processor; a run's
    weights first, as `<key>.<hash>.pt`.

    The JSON is written last and names its own weights file, so an entry is complete once its JSON exists, and two
    writers of the same key (two processes training the same missing run) leave a JSON beside the weights it names,
    whichever renames last; the loser's weights file stays behind, unused.
    """
    spec, key, code = job
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(store)
    entry = {"key": key, "spec": spec, "code_version": code,
             "trained_on": trained_on, "processor": processor_name(), "trained_at": time.strftime("%Y-%m-%d %H:%M:%S"),
             "seconds": seconds, "torch": torch.__version__}
    if model is not None:
        buffer = io.BytesIO()
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buffer)
        weights = buffer.getvalue()
        digest = hashlib.sha256(weights).hexdigest()
        entry.update(weights_file=f"{key}.{digest[:16]}.pt", weights_sha256=digest)
        write_atomically(store / entry["weights_file"], weights)
    write_atomically(store / f"{key}.json", json.dumps({**entry, **result}, indent=1).encode())
    return key


def load_entry(store, job, device="cpu"):
    """The stored (model or None, entry) of `job` (spec, key, code), or None when there is none; a damaged entry is
    reported, never used. A run's entry holds its weights (the model, on `device`), a range test's its curve."""
    spec, key, _ = job
    path = Path(store) / f"{key}.json"
    if not path.exists():
        return None
    try:
        entry = json.loads(path.read_text())
        if entry["key"] != key:
            raise ValueError(f"it holds the run of key {entry['key']}, not {key}: copied or renamed from another entry")
        model = None
        if spec.get("kind") == "lr_range_test":
            if not isinstance(entry["curve"]["loss"], list):
                raise TypeError("its curve holds no list of losses")
        else:
            weights = (Path(store) / entry["weights_file"]).read_bytes()
            if hashlib.sha256(weights).hexdigest() != entry["weights_sha256"]:
                raise ValueError(f"its weights file {entry['weights_file']} does not match the hash recorded in its "
                                 f"JSON")
            model = Net(**spec["model"])
            model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
            model = model.to(device)
            entry["history"].update(name=spec["name"], trained_on=f"{entry['trained_on']}, torch {entry['torch']}")
    except Exception as error:  # truncated or garbled JSON, a missing or damaged .pt, a wrong layout
        print(f"run store: entry {path} is unreadable ({type(error).__name__}: {error}); training it again",
              flush=True)
        return None
    return model, entry


@functools.cache
def cached_mnist(root, device):
    """load_mnist, once per process: the notebook and each worker hold one copy of the data."""
    return load_mnist(root, device)


def train_and_store(jobs, store, data_dir="data", threads=None):
    """Train the runs `jobs` [(spec, key, code)], whose specs differ in their seed only, together (one Net of as many
    copies) on the first spec["train_size"] training images, and store each as a run of its own; returns their keys.

    This is one job of a parallel worker, and the same call in the notebook's own process; `threads` sets
    torch's thread count there (the thread count changes the last digits of the results).
    """
    if threads:
        torch.set_num_threads(threads)
    spec = jobs[0][0]
    device = torch.device(spec["device"])
    data = cached_mnist(data_dir, device)
    if spec.get("validation"):
        data = validation_split(data, spec["validation"])
    data = first_training_images(data, spec["train_size"])
    config = {k: spec[k] for k in ("name", "model", "l1", "l2")}
    runs = train_model(config, data, spec["epochs"], batch_size=spec["batch_size"], max_lr=spec["max_lr"],
                       seeds=[s["seed"] for s, _, _ in jobs], device=device, progress=False,
                       micro_batch_size=spec["micro_batch_size"])
    where = device_name(device) + (f", {len(jobs)} seeds together" if len(jobs) > 1 else "")
    return [save_entry(store, job, {"history": history}, trained_on=where, seconds=sum(history["seconds"]),
                       model=model) for job, (model, history) in zip(jobs, runs)]


def seed_groups(jobs, most=None):
    """`jobs` [(spec, key, code)] in groups that can train together, in order: runs whose specs differ in their seed
    only, at most `most` a group (None: no limit)."""
    groups = {}
    for job in jobs:
        same = json.dumps({k: v for k, v in job[0].items() if k != "seed"}, sort_keys=True)
        groups.setdefault(same, []).append(job)
    most = most or len(jobs)
    return [group[i:i + most] for group in groups.values() for i in range(0, len(group), most)]


def default_workers(device):
    """Parallel training processes that suit `device`: one per CPU core on the CPU (this small net uses two threads
    poorly, even with seeds together), one on a GPU."""
    return (os.cpu_count() or 1) if torch.device(device).type == "cpu" else 1


def default_together(device):
    """How many seeds of a configuration train together on `device`: all of them on a GPU, where a step's time is the
    number of operators it launches, whatever their size; one at a time on the CPU, where parallel workers are as fast
    (benchmark.py) and an interrupted call loses only the runs in progress."""
    return None if torch.device(device).type == "cuda" else 1


def describe_run(spec, entry, trained_now, micro_batch=False):
    """One log line per run: its name (and micro-batch, with `micro_batch`), seed, final test accuracy, and whether it
    was trained now or loaded."""
    h = entry["history"]
    how = "trained now" if trained_now else f"loaded from the store (trained {entry['trained_at']}"
    how += f" on {entry['trained_on']}, {entry['seconds']:.0f} s" + ("" if trained_now else ")")
    extra = f" micro-batch {spec['micro_batch_size']:3d}" if micro_batch else ""
    return f"{spec['name']:>8}{extra} seed {spec['seed']}: final test acc {h['test_acc'][-1]:6.2f}% | {how}"


def summary(loaded, trained):
    """One line for a train_or_load call: how many runs, how many loaded and trained now, where, and their seconds."""
    entries = [entry for _, entry in loaded]
    where = " and ".join(sorted({entry["trained_on"] for entry in entries}))
    return (f"{len(entries)} runs: {len(entries) - trained} loaded from the store"
            + (f", {trained} trained now" if trained else "")
            + f"; trained on {where}, {sum(entry['seconds'] for entry in entries):.0f} s of training in all")


def train_or_load(specs, store="runs", data_dir="data", *, workers=1, retrain=False, together=None, verbose=True):
    """(model, history) for every spec, in order: loaded from `store` when there, trained and stored when not.

    The missing seeds of a configuration train together, at most `together` at a time (None: all), in `workers`
    parallel processes (joblib), one torch thread each, or in this process when `workers` is 1; each run is stored the
    moment its group ends, so an interrupted call loses only the groups in progress. Prints a line per run (`verbose`)
    or one summary line, and a progress bar while it trains; `retrain` trains every spec anew.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    jobs = keyed(specs, store, data_dir)
    sweep = any(spec["micro_batch_size"] != spec["batch_size"] for spec in specs)  # then every line names its size
    results = [None if retrain else load_entry(store, job) for job in jobs]
    for spec, result in zip(specs, results):
        if result and verbose:
            print(describe_run(spec, result[1], trained_now=False, micro_batch=sweep), flush=True)
    todo = seed_groups([job for job, result in zip(jobs, results) if result is None], together)
    if todo:
        runs = sum(map(len, todo))
        threads = max(1, (os.cpu_count() or 1) // workers)
        if workers == 1:
            done = (train_and_store(group, store, data_dir) for group in todo)
        else:
            done = joblib.Parallel(n_jobs=workers, return_as="generator_unordered")(
                joblib.delayed(train_and_store)(group, store, data_dir, threads) for group in todo)
        with tqdm(total=runs, desc=f"training {runs} runs in {len(todo)} group(s) on {workers} worker(s)",
                  unit="run", file=sys.stdout, ncols=110, ascii=" #") as bar:
            for group_keys in done:
                for key in group_keys:
                    entry = json.loads((Path(store) / f"{key}.json").read_text())
                    if verbose:
                        bar.write(describe_run(entry["spec"], entry, trained_now=True, micro_batch=sweep))
                    bar.update()
    loaded = [result or load_entry(store, job) for job, result in zip(jobs, results)]
    if any(result is None for result in loaded):
        raise RuntimeError(f"run store {store}: a run just trained could not be read back")
    if not verbose:
        print(summary(loaded, sum(result is None for result in results)), flush=True)
    return [(model.to(torch.device(spec["device"])), entry["history"]) for spec, (model, entry) in zip(specs, loaded)]


def lr_range_or_load(specs, store, data, *, data_dir="data", retrain=False, verbose=True):
    """The curve of every range test in `specs`, loaded from the run store or run here on `data` (the missing seeds
    of a network together) and stored as entries of their own.

    Each curve is {"name", "seed", "lr", "loss", "trained_on"}; a line per test (`verbose`), or one line in all, says
    what was loaded or run.
    """
    jobs = keyed(specs, store, data_dir)
    entries = {job[1]: None if retrain else load_entry(store, job) for job in jobs}
    how = {key: f"loaded from the store (run {found[1]['trained_at']} on {found[1]['trained_on']})"
           for key, found in entries.items() if found}
    for group in seed_groups([job for job in jobs if entries[job[1]] is None]):
        start = time.perf_counter()
        curves = lr_range_test([spec for spec, _, _ in group], data)
        seconds = (time.perf_counter() - start) / len(group)
        where = device_name(group[0][0]["device"]) + (f", {len(group)} seeds together" if len(group) > 1 else "")
        for job, curve in zip(group, curves):
            save_entry(store, job, {"curve": curve}, trained_on=where, seconds=seconds)
            entries[job[1]] = load_entry(store, job)
            how[job[1]] = f"run now, {seconds:.0f} s"
    curves = []
    for spec, key, _ in jobs:
        entry = entries[key][1]
        curve = entry["curve"]
        step = divergence_step(curve["loss"])
        where = f"diverged at lr {curve['lr'][step]:.3g}" if step is not None else "did not diverge"
        if verbose:
            print(f"{spec['name']:>14} seed {spec['seed']}: {len(curve['loss'])} steps, {where} | {how[key]}",
                  flush=True)
        curves.append({"name": spec["name"], "seed": spec["seed"], **curve,
                       "trained_on": f"{entry['trained_on']}, torch {entry['torch']}"})
    if not verbose:
        run_now = sum(h.startswith("run now") for h in how.values())
        print(f"{len(specs)} range tests: {len(specs) - run_now} loaded from the store"
              + (f", {run_now} run now" if run_now else "") + "; run on "
              + " and ".join(sorted({entries[key][1]["trained_on"] for _, key, _ in jobs})), flush=True)
    return curves


def save_histories(histories, path):
    """Write a list of histories to a JSON file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(histories, indent=1))


def load_histories(path):
    """Read the list of histories written by save_histories."""
    return json.loads(Path(path).read_text())
