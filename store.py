"""The run store and parallel runs: a run's spec and key (a hash of the spec and of the training code), saving and
loading entries, and train_or_load, which loads what the store has and trains the rest in worker processes."""
import ast
import functools
import hashlib
import inspect
import io
import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import joblib
import torch
from tqdm import tqdm

from model import Net
from utils import (MNIST_MEAN, MNIST_STD, MOMENTUM, augment, conv_weights, device_name, evaluate, final_evaluation,
                   l1_penalty, load_mnist, make_optimizer, make_scheduler, misclassified, predict, seed_stream, set_seed,
                   train_epoch, train_model, training_batches)


def run_spec(config, seed, epochs, batch_size=128, max_lr=0.1, device="cpu", train_size=60_000,
             micro_batch_size=None):
    """Everything that sets a training run's result, as a JSON-ready dict: the run store's key and a worker's job.

    `config` is {"name", "model", "l1", "l2"} as for train_model; the run trains on the first `train_size`
    training images. Only the device type counts (cpu / cuda), not which GPU or how many threads.
    """
    return {"name": config["name"], "model": dict(config.get("model", {})), "l1": float(config.get("l1", 0.0)),
            "l2": float(config.get("l2", 0.0)), "seed": seed, "epochs": epochs, "batch_size": batch_size,
            "micro_batch_size": micro_batch_size or batch_size, "max_lr": float(max_lr), "train_size": train_size,
            "device": torch.device(device).type}


def _without_docstrings(source):
    """The AST of `source` as text, docstrings and comments left out: the code's meaning, not its wording."""
    tree = ast.parse(textwrap.dedent(source))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return _dump(tree)


_FIELDS_AFTER_3_11 = {"type_params"}  # AST fields newer Pythons added; empty in code that does not use them


def _dump(node):
    """`ast.dump(node)` as Python 3.11 writes it, on any Python: 3.12 added `type_params=[]` and 3.13 leaves out empty
    lists, which would give the same code another key there (and every stored run a miss)."""
    if isinstance(node, list):
        return f"[{', '.join(map(_dump, node))}]"
    if not isinstance(node, ast.AST):
        return repr(node)
    kind = type(node).__name__
    shown = []
    for name in node._fields:
        value = getattr(node, name, None)
        unset = value is None and not (name == "value" and kind in ("Constant", "MatchSingleton"))  # None is a value
        if not unset and not (name in _FIELDS_AFTER_3_11 and value == []):
            shown.append(f"{name}={_dump(value)}")
    return f"{kind}({', '.join(shown)})"


def training_code_version(*extra_code):
    """A hash of the code that decides a run's numbers: model.py, the training and test functions, the data constants,
    and the functions `extra_code` of an experiment that trains its own way (the learning-rate range test).

    Part of every run's key, so a stored run is never reused after that code changes; editing a docstring,
    a comment, a plot or a table leaves it alone.
    """
    return _code_hash(TRAINING_CODE + extra_code)


@functools.cache  # once per process and set of functions: editing utils.py while runs train must not change their keys
def _code_hash(functions):
    import model as model_module
    sources = [inspect.getsource(model_module)] + [inspect.getsource(f) for f in functions]
    text = "\n".join(map(_without_docstrings, sources)) + repr((MNIST_MEAN, MNIST_STD, MOMENTUM))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_key(spec, extra_code=()):
    """The store key of a run: a hash of its spec (without the display name) and of the training code."""
    identity = {k: v for k, v in spec.items() if k != "name"}
    identity["code"] = training_code_version(*extra_code)
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


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


def save_run(store, spec, model, history, trained_on):
    """Store a finished run: its state_dict as `<key>.<hash>.pt`, then `<key>.json` (spec, history, when, where, and the
    weights' file name and hash).

    The JSON is written last and names its own weights file, so an entry is complete once its JSON exists, and two
    writers of the same key (two processes training the same missing run) leave a JSON beside the weights it names,
    whichever renames last; the loser's weights file stays behind, unused.
    """
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(store)
    key = run_key(spec)
    buffer = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buffer)
    weights = buffer.getvalue()
    digest = hashlib.sha256(weights).hexdigest()
    weights_file = f"{key}.{digest[:16]}.pt"
    write_atomically(store / weights_file, weights)
    entry = {"key": key, "spec": spec, "code_version": training_code_version(),
             "trained_on": trained_on, "trained_at": time.strftime("%Y-%m-%d %H:%M:%S"),
             "seconds": sum(history["seconds"]), "torch": torch.__version__,
             "weights_file": weights_file, "weights_sha256": digest, "history": history}
    write_atomically(store / f"{key}.json", json.dumps(entry, indent=1).encode())
    return key


def load_run(store, spec, device="cpu"):
    """The stored (model, entry) of `spec`, or None when there is none; a damaged entry is reported, never used."""
    key = run_key(spec)
    path = Path(store) / f"{key}.json"
    if not path.exists():
        return None
    try:
        entry = json.loads(path.read_text())
        if entry["key"] != key:
            raise ValueError(f"it holds the run of key {entry['key']}, not {key}: copied or renamed from another entry")
        weights = (Path(store) / entry["weights_file"]).read_bytes()
        if hashlib.sha256(weights).hexdigest() != entry["weights_sha256"]:
            raise ValueError(f"its weights file {entry['weights_file']} does not match the hash recorded in its JSON")
        model = Net(**spec["model"])
        model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
        entry["history"].update(name=spec["name"], trained_on=f"{entry['trained_on']}, torch {entry['torch']}")
    except Exception as error:  # truncated or garbled JSON, a missing or damaged .pt, a wrong layout
        print(f"run store: entry {path} is unreadable ({type(error).__name__}: {error}); training it again",
              flush=True)
        return None
    return model.to(device), entry


@functools.cache
def cached_mnist(root, device):
    """load_mnist, once per process: the notebook and each worker hold one copy of the data."""
    return load_mnist(root, device)


def train_and_store(specs, store, data_dir="data", threads=None):
    """Train the runs `specs`, which differ in their seed only, together (one Net of as many copies) on the first
    spec["train_size"] training images, and store each as a run of its own; returns their store keys.

    This is one job of a parallel worker, and the same call in the notebook's own process; `threads` sets
    torch's thread count there (the thread count changes the last digits of the results).
    """
    if threads:
        torch.set_num_threads(threads)
    spec = specs[0]
    device = torch.device(spec["device"])
    (train_x, train_y), test = cached_mnist(data_dir, device)
    data = ((train_x[:spec["train_size"]], train_y[:spec["train_size"]]), test)
    config = {k: spec[k] for k in ("name", "model", "l1", "l2")}
    runs = train_model(config, data, spec["epochs"], spec["batch_size"], spec["max_lr"], [s["seed"] for s in specs],
                       device, progress=False, micro_batch_size=spec["micro_batch_size"])
    where = device_name(device) + (f", {len(specs)} seeds together" if len(specs) > 1 else "")
    return [save_run(store, s, model, history, where) for s, (model, history) in zip(specs, runs)]


def seed_groups(specs, most=None):
    """`specs` in groups that can train together, in order: runs that differ in their seed only, at most `most` a
    group (None: no limit)."""
    groups = {}
    for spec in specs:
        groups.setdefault(json.dumps({k: v for k, v in spec.items() if k != "seed"}, sort_keys=True), []).append(spec)
    most = most or len(specs)
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


def train_or_load(specs, store="runs", data_dir="data", workers=1, retrain=False, together=None, verbose=True):
    """(model, history) for every spec, in order: loaded from `store` when there, trained and stored when not.

    The missing seeds of a configuration train together, at most `together` at a time (None: all), in `workers`
    parallel processes (joblib), one torch thread each, or in this process when `workers` is 1; each run is stored the
    moment its group ends, so an interrupted call loses only the groups in progress. Prints a line per run (`verbose`)
    or one summary line, and a progress bar while it trains; `retrain` trains every spec anew.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    keys = [run_key(spec) for spec in specs]
    for i, key in enumerate(keys):
        if key in keys[:i]:
            raise ValueError(f"train_or_load was given the same run twice ({specs[i]}): it would count twice in "
                             f"every mean and test; pass each run once")
    sweep = any(spec["micro_batch_size"] != spec["batch_size"] for spec in specs)  # then every line names its size
    results = [None if retrain else load_run(store, spec) for spec in specs]
    for spec, result in zip(specs, results):
        if result and verbose:
            print(describe_run(spec, result[1], trained_now=False, micro_batch=sweep), flush=True)
    todo = seed_groups([spec for spec, result in zip(specs, results) if result is None], together)
    if todo:
        runs = sum(map(len, todo))
        threads = max(1, (os.cpu_count() or 1) // workers)
        if workers == 1:
            jobs = (train_and_store(group, store, data_dir) for group in todo)
        else:
            jobs = joblib.Parallel(n_jobs=workers, return_as="generator_unordered")(
                joblib.delayed(train_and_store)(group, store, data_dir, threads) for group in todo)
        with tqdm(total=runs, desc=f"training {runs} runs in {len(todo)} group(s) on {workers} worker(s)",
                  unit="run", file=sys.stdout, ncols=110, ascii=" #") as bar:
            for group_keys in jobs:
                for key in group_keys:
                    entry = json.loads((Path(store) / f"{key}.json").read_text())
                    if verbose:
                        bar.write(describe_run(entry["spec"], entry, trained_now=True, micro_batch=sweep))
                    bar.update()
    loaded = [result or load_run(store, spec) for spec, result in zip(specs, results)]
    if any(result is None for result in loaded):
        raise RuntimeError(f"run store {store}: a run just trained could not be read back")
    if not verbose:
        print(summary(loaded, sum(result is None for result in results)), flush=True)
    return [(model.to(torch.device(spec["device"])), entry["history"]) for spec, (model, entry) in zip(specs, loaded)]


TRAINING_CODE = (set_seed, seed_stream, augment, training_batches, conv_weights, l1_penalty, make_optimizer,
                 make_scheduler, train_epoch, predict, evaluate, train_model, final_evaluation, misclassified)


def save_histories(histories, path):
    """Write a list of histories to a JSON file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(histories, indent=1))


def load_histories(path):
    """Read the list of histories written by save_histories."""
    return json.loads(Path(path).read_text())
