"""Data, training, regularizers, seeding, history and plots for the BN / LN / GN study on MNIST.

The whole dataset lives on the training device as tensors and is augmented there in batch, so the GPU is
never waiting for a CPU data pipeline.
"""
import ast
import copy
import functools
import hashlib
import inspect
import io
import json
import math
import os
import statistics
import struct
import sys
import textwrap
import time
from pathlib import Path

import joblib

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator, ScalarFormatter
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import stats
from torchvision import datasets
from tqdm import tqdm

from model import Net

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
BACKGROUND = (0.0 - MNIST_MEAN) / MNIST_STD  # a black pixel after normalization


# ---------------------------------------------------------------- device, seed, data

def get_device():
    """The GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device):
    """A human-readable name of `device`, for logs and the README."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def set_seed(seed):
    """Seed every generator the study uses; with cuDNN's autotuner off, a run is repeatable on one device."""
    torch.manual_seed(seed)  # CPU and all GPUs
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


MNIST_LAYOUT = {  # file name: (magic number, dimensions): the IDX header of each MNIST file
    "train-images-idx3-ubyte": (2051, (60_000, 28, 28)), "train-labels-idx1-ubyte": (2049, (60_000,)),
    "t10k-images-idx3-ubyte": (2051, (10_000, 28, 28)), "t10k-labels-idx1-ubyte": (2049, (10_000,)),
}
MNIST_FILES = tuple(MNIST_LAYOUT)


def check_mnist_file(path):
    """Raise ValueError naming `path`, what is wrong with it and the fix, unless it is a well-formed MNIST IDX file.

    Checks the header (magic number and dimensions) and that the size is header plus one byte per value: a
    truncated copy or download, or another file under MNIST's name, fails here rather than deep in torchvision.
    """
    path = Path(path)
    magic, dims = MNIST_LAYOUT[path.name]
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)
    expected = len(header) + math.prod(dims)
    fix = ("Delete it so that torchvision downloads it again (online), or replace it with the original "
           "decompressed file (md5 sums: torchvision.datasets.MNIST.resources).")
    with open(path, "rb") as f:
        found = f.read(len(header))
    if found != header:
        raise ValueError(f"{path} is not the MNIST file it is named after: its header is {found.hex()}, MNIST's "
                         f"{path.name} starts with {header.hex()} (magic number {magic}, dimensions {dims}). {fix}")
    size = path.stat().st_size
    if size != expected:
        raise ValueError(f"{path} is damaged: it has {size:,} bytes, but MNIST's {path.name} has {expected:,} "
                         f"({'truncated' if size < expected else 'extra bytes at the end'}). {fix}")


def load_mnist(root="data", device="cpu"):
    """MNIST as ((train_images, train_labels), (test_images, test_labels)) on `device`.

    Images are float tensors of shape (N, 1, 28, 28), normalized with the MNIST mean and std; labels are int64.
    Downloads into `root` when the files are missing and the machine is online; a damaged file is an error that
    names it.
    """
    raw = Path(root) / "MNIST" / "raw"
    for name in MNIST_FILES:
        if (raw / name).exists():
            check_mnist_file(raw / name)
    splits = []
    for train in (True, False):
        try:
            dataset = datasets.MNIST(root, train=train, download=True)
        except Exception as error:  # offline: URLError, RuntimeError, ... from torchvision's downloader
            raise FileNotFoundError(
                f"MNIST is not in {raw} and could not be downloaded ({type(error).__name__}: {error}). "
                f"Offline, put the four decompressed files {', '.join(MNIST_FILES)} into {raw}/"
            ) from error
        images = (dataset.data.float().div(255).sub(MNIST_MEAN).div(MNIST_STD)).unsqueeze(1)
        splits.append((images.to(device), dataset.targets.to(device)))
    return tuple(splits)


def augment(images, max_degrees=7.0, max_shift=2.0):
    """Rotate each image by up to `max_degrees` and shift it by up to `max_shift` pixels, all in one batch op.

    Pixels that come in from outside the frame are background (black), as in the original digits.
    """
    n = images.shape[0]
    angle = (torch.rand(n, device=images.device) * 2 - 1) * math.radians(max_degrees)
    shift = (torch.rand(n, 2, device=images.device) * 2 - 1) * (2 * max_shift / images.shape[-1])
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, images.shape, align_corners=False)
    return F.grid_sample(images - BACKGROUND, grid, align_corners=False) + BACKGROUND


def batches(images, labels, batch_size, shuffle=False, drop_last=False):
    """Yield (images, labels) mini-batches of on-device tensors; a new random order each call if `shuffle`."""
    n = len(images)
    order = torch.randperm(n, device=images.device) if shuffle else torch.arange(n, device=images.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        yield images[index], labels[index]


# ---------------------------------------------------------------- notebook parameters

FROM_ENVIRONMENT = {}  # the parameters from_env took from the environment, so that a run can say it was not the default


def from_env(name, default):
    """The parameter `name` from the environment when set there, parsed like `default` (int, float, bool, str, or a
    list of ints written "2,4,8"), else `default`; a value that does not parse is an error naming the parameter."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        if isinstance(default, bool):
            if text.lower() not in ("0", "1", "true", "false"):
                raise ValueError("not a truth value")
            value = text.lower() in ("1", "true")
        elif isinstance(default, list):
            value = [int(part) for part in text.split(",")]
        else:
            value = type(default)(text)
    except ValueError:
        kind = {bool: "0, 1, true or false", list: "comma-separated whole numbers", int: "a whole number",
                float: "a number"}.get(type(default), "a value")
        raise ValueError(f"environment variable {name}={text!r} is not {kind}") from None
    FROM_ENVIRONMENT[name] = value
    return value


def _whole(low, high=math.inf):
    def ok(value):
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    return ok, f"a whole number from {low}" + ("" if high == math.inf else f" to {high:,}")


_POSITIVE = (lambda v: isinstance(v, (int, float)) and 0 < v < math.inf, "a number above 0")

PARAMETER_RULES = {  # name: (check, what is allowed)
    "EPOCHS": _whole(1), "SEEDS": _whole(1), "BATCH_SIZE": _whole(1, 60_000),
    "MAX_LR": _POSITIVE,
    "L1_LAMBDA": (lambda v: isinstance(v, (int, float)) and 0 <= v < math.inf, "a number from 0"),
    "L2_LAMBDA": (lambda v: isinstance(v, (int, float)) and 0 <= v < math.inf, "a number from 0"),
    "GN_GROUPS": (lambda v: v in (1, 2, 4, 8) and not isinstance(v, bool),
                  f"1, 2, 4 or 8 (a group count must divide every layer width {Net.WIDTHS})"),
    "DROPOUT": (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a number from 0 up to (not including) 1"),
    "SWEEP_MICRO_BATCHES": (lambda v: isinstance(v, list) and len(v) > 0 and all(_whole(1)[0](b) for b in v),
                            "a non-empty list of whole numbers from 1 to BATCH_SIZE"),
    "SWEEP_TRAIN_SIZE": _whole(1, 60_000), "SWEEP_EPOCHS": _whole(1), "SWEEP_SEEDS": _whole(1),
    "LR_TEST_SEEDS": _whole(1), "LR_TEST_TRAIN_SIZE": _whole(1, 60_000),
    "LR_TEST_MIN": _POSITIVE, "LR_TEST_MAX": _POSITIVE,
    "GROUP_COUNTS": (lambda v: isinstance(v, list) and len(v) > 0 and all(g in (1, 2, 4, 8) for g in v),
                     f"a non-empty list of 1, 2, 4 and 8 (a group count must divide every layer width {Net.WIDTHS})"),
    "GROUP_EPOCHS": _whole(1), "GROUP_SEEDS": _whole(1), "GROUP_TRAIN_SIZE": _whole(1, 60_000), "WORKERS": _whole(0),
    "RETRAIN": (lambda v: isinstance(v, bool), "True or False"),
    "RUNS_DIR": (lambda v: isinstance(v, str) and v != "", "a folder name"),
    "DATA_DIR": (lambda v: isinstance(v, str) and v != "", "a folder name"),
    "OUTPUT_DIR": (lambda v: isinstance(v, str) and v != "", "a folder name"),
}


def check_parameters(params):
    """Stop with a ValueError naming the parameter, its value and what is allowed, for any wrong notebook parameter.

    `params` maps names to values (the notebook passes its upper-case globals); all of PARAMETER_RULES must be there.
    """
    missing = [name for name in PARAMETER_RULES if name not in params]
    if missing:
        raise ValueError(f"parameters missing: {', '.join(missing)}")
    for name, (ok, allowed) in PARAMETER_RULES.items():
        if not ok(params[name]):
            raise ValueError(f"parameter {name} = {params[name]!r} is not allowed: it must be {allowed}")
    if max(params["SWEEP_MICRO_BATCHES"]) > params["BATCH_SIZE"]:
        raise ValueError(f"parameter SWEEP_MICRO_BATCHES = {params['SWEEP_MICRO_BATCHES']!r} is not allowed: a "
                         f"micro-batch cannot exceed BATCH_SIZE = {params['BATCH_SIZE']}")
    for name in ("SWEEP_TRAIN_SIZE", "LR_TEST_TRAIN_SIZE", "GROUP_TRAIN_SIZE"):
        if params[name] < params["BATCH_SIZE"]:
            raise ValueError(f"parameter {name} = {params[name]!r} is not allowed: it must hold at least one batch "
                             f"of BATCH_SIZE = {params['BATCH_SIZE']} images")
    if params["LR_TEST_MIN"] >= params["LR_TEST_MAX"]:
        raise ValueError(f"parameter LR_TEST_MIN = {params['LR_TEST_MIN']!r} is not allowed: the range test raises "
                         f"the learning rate, so it must be below LR_TEST_MAX = {params['LR_TEST_MAX']!r}")


# ---------------------------------------------------------------- regularizers, optimizer

def conv_weights(model):
    """The conv kernels: the only parameters the L1 and L2 penalties act on.

    Norm scales and shifts are left alone: there are few of them, they set the scale of whole channels rather
    than fit the data, and pulling them to zero would switch channels off instead of regularizing them.
    """
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]


def l1_penalty(model):
    """Sum of the absolute values of all conv weights (multiply by the L1 lambda and add to the loss)."""
    return sum(w.abs().sum() for w in conv_weights(model))


def make_optimizer(model, lr, l2=0.0, momentum=0.9):
    """SGD with Nesterov momentum; L2 acts as weight decay `l2` on the conv weights only."""
    decayed = conv_weights(model)
    others = [p for p in model.parameters() if all(p is not w for w in decayed)]
    groups = [{"params": decayed, "weight_decay": l2}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)


def make_scheduler(optimizer, max_lr, total_steps):
    """One-cycle learning rate: warm up for a fifth of the steps, then cosine down; a function of the step only."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps,
                                               pct_start=0.2, div_factor=10, final_div_factor=100)


# ---------------------------------------------------------------- train and test

def train_epoch(model, optimizer, scheduler, loader, l1=0.0, augment_batch=augment, on_step=None,
                micro_batch_size=None):
    """One training pass over `loader`, an iterable of (images, labels) batches, each augmented by `augment_batch`.

    Each batch is one optimizer step. With `micro_batch_size`, the model sees the batch in chunks of that many
    samples and their gradients are summed before the step (gradient accumulation): the step equals the whole
    batch's for LN and GN, while BN normalizes with each chunk's own statistics. Returns (mean loss, accuracy %)
    over the epoch: running, sample-weighted figures while the weights change, of the cross-entropy alone
    (without the L1 term). The scheduler steps once per batch. `on_step()` is called after each step.
    """
    model.train()
    loss_sums, hits, seen = [], [], 0
    for x, y in loader:
        x = augment_batch(x) if augment_batch else x
        optimizer.zero_grad(set_to_none=True)
        for x_part, y_part in zip(x.split(micro_batch_size or len(y)), y.split(micro_batch_size or len(y))):
            log_probs = model(x_part)
            loss_sum = F.nll_loss(log_probs, y_part, reduction="sum")
            (loss_sum / len(y)).backward()
            loss_sums.append(loss_sum.detach())  # tensors: no waiting for the GPU inside the loop
            hits.append((log_probs.argmax(1) == y_part).sum())
        if l1:
            (l1 * l1_penalty(model)).backward()
        optimizer.step()
        scheduler.step()
        seen += len(y)
        if on_step:
            on_step()
    return torch.stack(loss_sums).sum().item() / seen, 100.0 * torch.stack(hits).sum().item() / seen


@torch.inference_mode()
def predict(model, images, batch_size=1000):
    """Log-probabilities for `images` from the model in eval mode, in the order given."""
    model.eval()
    return torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def evaluate(model, images, labels):
    """(mean loss, accuracy %) on a fixed set: summed per-sample cross-entropy / N, and percent correct."""
    log_probs = predict(model, images)
    loss = F.nll_loss(log_probs, labels, reduction="sum").item() / len(labels)
    return loss, 100.0 * (log_probs.argmax(1) == labels).sum().item() / len(labels)


def misclassified(model, images, labels, count=10):
    """The `count` most confident mistakes of the model: dict of index, predicted, actual, probability lists."""
    probs = predict(model, images).exp()
    confidence, predicted = probs.max(1)
    wrong = (predicted != labels).nonzero().squeeze(1)
    order = torch.sort(confidence[wrong], descending=True, stable=True).indices[:count]
    index = wrong[order]
    return {"index": index.tolist(), "predicted": predicted[index].tolist(),
            "actual": labels[index].tolist(), "probability": confidence[index].tolist()}


def count_parameters(model):
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_model(config, data, epochs, batch_size=128, max_lr=0.1, seed=1, device="cpu", progress=True,
                micro_batch_size=None):
    """Build `Net(**config["model"])`, train it for `epochs` and test after each; returns (model, history).

    `config` is {"name": ..., "model": Net kwargs, "l1": lambda, "l2": lambda}. The history holds plain
    numbers per epoch (JSON-ready) plus the config, seed and parameter count. `micro_batch_size` (see
    train_epoch) splits each batch of `batch_size` for the forward passes only.
    """
    (train_x, train_y), (test_x, test_y) = data
    set_seed(seed)
    model = Net(**config.get("model", {})).to(device)
    l1, l2 = config.get("l1", 0.0), config.get("l2", 0.0)
    optimizer = make_optimizer(model, max_lr, l2)
    steps = len(train_x) // batch_size
    if steps == 0:
        raise ValueError(f"batch_size {batch_size} is larger than the {len(train_x)} training images")
    if micro_batch_size is not None and not 1 <= micro_batch_size <= batch_size:
        raise ValueError(f"micro_batch_size must be between 1 and batch_size {batch_size}, got {micro_batch_size}")
    scheduler = make_scheduler(optimizer, max_lr, epochs * steps)
    history = {"name": config["name"], "config": config, "seed": seed, "batch_size": batch_size,
               "micro_batch_size": micro_batch_size or batch_size, "max_lr": max_lr, "params": count_parameters(model),
               "epoch": [], "lr": [], "seconds": [], "train_loss": [], "train_acc": [], "test_loss": [], "test_acc": []}
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        with tqdm(total=steps, desc=f"{config['name']:>8} epoch {epoch:2d}/{epochs}", file=sys.stdout,
                  disable=not progress, mininterval=1.0, ncols=110, ascii=" #") as bar:
            lr = optimizer.param_groups[0]["lr"]
            loader = batches(train_x, train_y, batch_size, shuffle=True, drop_last=True)
            train_loss, train_acc = train_epoch(model, optimizer, scheduler, loader, l1, on_step=bar.update,
                                                micro_batch_size=micro_batch_size)
            test_loss, test_acc = evaluate(model, test_x, test_y)
            seconds = time.perf_counter() - start
            bar.set_postfix_str(f"train {train_loss:.4f} {train_acc:.2f}% | test {test_loss:.4f} "
                                f"{test_acc:.2f}%")
        for key, value in zip(("epoch", "lr", "seconds", "train_loss", "train_acc", "test_loss", "test_acc"),
                              (epoch, lr, seconds, train_loss, train_acc, test_loss, test_acc)):
            history[key].append(value)
    return model, history


# ---------------------------------------------------------------- run store and parallel runs

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
    return ast.dump(tree)


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
    text = "\n".join(map(_without_docstrings, sources)) + repr((MNIST_MEAN, MNIST_STD))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_key(spec, extra_code=()):
    """The store key of a run: a hash of its spec (without the display name) and of the training code."""
    identity = {k: v for k, v in spec.items() if k != "name"}
    identity["code"] = training_code_version(*extra_code)
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def _write_atomically(path, data):
    """Write bytes to `path` through a temporary file and a rename: readers see the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_run(store, spec, model, history, trained_on):
    """Store a finished run: `<key>.pt` (the state_dict), then `<key>.json` (spec, history, when, where, weights hash).

    The JSON is written last, so an entry without it, or with a different weights hash, is incomplete.
    """
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    key = run_key(spec)
    buffer = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buffer)
    weights = buffer.getvalue()
    _write_atomically(store / f"{key}.pt", weights)
    entry = {"key": key, "spec": spec, "code_version": training_code_version(),
             "trained_on": trained_on, "trained_at": time.strftime("%Y-%m-%d %H:%M:%S"),
             "seconds": sum(history["seconds"]), "torch": torch.__version__,
             "weights_sha256": hashlib.sha256(weights).hexdigest(), "history": history}
    _write_atomically(store / f"{key}.json", json.dumps(entry, indent=1).encode())
    return key


def load_run(store, spec, device="cpu"):
    """The stored (model, entry) of `spec`, or None when there is none; a damaged entry is reported, never used."""
    key = run_key(spec)
    path = Path(store) / f"{key}.json"
    if not path.exists():
        return None
    try:
        entry = json.loads(path.read_text())
        weights = (Path(store) / f"{key}.pt").read_bytes()
        if entry["key"] != key or hashlib.sha256(weights).hexdigest() != entry["weights_sha256"]:
            raise ValueError("its weights file does not match the hash recorded in its JSON")
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


def train_and_store(spec, store, data_dir="data", threads=None):
    """Train the run `spec` on the first spec["train_size"] training images and store it; returns its store key.

    This is one job of a parallel worker, and the same call in the notebook's own process; `threads` sets
    torch's thread count there (the thread count changes the last digits of the results).
    """
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(spec["device"])
    (train_x, train_y), test = cached_mnist(data_dir, device)
    data = ((train_x[:spec["train_size"]], train_y[:spec["train_size"]]), test)
    config = {k: spec[k] for k in ("name", "model", "l1", "l2")}
    model, history = train_model(config, data, spec["epochs"], spec["batch_size"], spec["max_lr"], spec["seed"],
                                 device, progress=False, micro_batch_size=spec["micro_batch_size"])
    return save_run(store, spec, model, history, device_name(device))


def default_workers(device):
    """Parallel runs that suit `device`: one per CPU core on the CPU (this small net uses two threads poorly),
    one on a GPU."""
    return (os.cpu_count() or 1) if torch.device(device).type == "cpu" else 1


def describe_run(spec, entry, trained_now):
    """One log line per run: its name, seed, final test accuracy, and whether it was trained now or loaded."""
    h = entry["history"]
    how = "trained now" if trained_now else f"loaded from the store (trained {entry['trained_at']}"
    how += f" on {entry['trained_on']}, {entry['seconds']:.0f} s" + ("" if trained_now else ")")
    extra = "" if spec["micro_batch_size"] == spec["batch_size"] else f" micro-batch {spec['micro_batch_size']:3d}"
    return f"{spec['name']:>8}{extra} seed {spec['seed']}: final test acc {h['test_acc'][-1]:6.2f}% | {how}"


def train_or_load(specs, store="runs", data_dir="data", workers=1, retrain=False):
    """(model, history) for every spec, in order: loaded from `store` when there, trained and stored when not.

    Missing runs train in `workers` parallel processes (joblib), one torch thread each, or in this process
    when `workers` is 1; each is stored the moment it ends, so an interrupted call loses only the runs in
    progress. Prints a line per run and a progress bar over the runs; `retrain` trains every spec anew.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    results = [None if retrain else load_run(store, spec) for spec in specs]
    for spec, result in zip(specs, results):
        if result:
            print(describe_run(spec, result[1], trained_now=False), flush=True)
    todo = [spec for spec, result in zip(specs, results) if result is None]
    if todo:
        threads = max(1, (os.cpu_count() or 1) // workers)
        if workers == 1:
            jobs = (train_and_store(spec, store, data_dir) for spec in todo)
        else:
            jobs = joblib.Parallel(n_jobs=workers, return_as="generator_unordered")(
                joblib.delayed(train_and_store)(spec, store, data_dir, threads) for spec in todo)
        with tqdm(total=len(todo), desc=f"training {len(todo)} runs on {workers} worker(s)", unit="run",
                  file=sys.stdout, ncols=110, ascii=" #") as bar:
            for key in jobs:
                entry = json.loads((Path(store) / f"{key}.json").read_text())
                bar.write(describe_run(entry["spec"], entry, trained_now=True))
                bar.update()
    loaded = [result or load_run(store, spec) for spec, result in zip(specs, results)]
    if any(result is None for result in loaded):
        raise RuntimeError(f"run store {store}: a run just trained could not be read back")
    return [(model.to(torch.device(spec["device"])), entry["history"]) for spec, (model, entry) in zip(specs, loaded)]


TRAINING_CODE = (set_seed, augment, batches, conv_weights, l1_penalty, make_optimizer, make_scheduler, train_epoch,
                 predict, evaluate, train_model)


# ---------------------------------------------------------------- history

def save_histories(histories, path):
    """Write a list of histories to a JSON file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(histories, indent=1))


def load_histories(path):
    """Read the list of histories written by save_histories."""
    return json.loads(Path(path).read_text())


def results_table(histories):
    """A Markdown table per configuration: parameters, final and best test accuracy, train accuracy, time.

    The headline is the final epoch; "best" is extra information, picked on the test set after the fact.
    """
    rows = ["| configuration | params | final test acc | final test loss | best test acc (epoch) "
            "| final train acc* | best train acc* (epoch) | training time |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for h in histories:
        best_test = max(range(len(h["epoch"])), key=lambda i: h["test_acc"][i])
        best_train = max(range(len(h["epoch"])), key=lambda i: h["train_acc"][i])
        rows.append(f"| {h['name']} | {h['params']:,} | {h['test_acc'][-1]:.2f}% | {h['test_loss'][-1]:.4f} "
                    f"| {h['test_acc'][best_test]:.2f}% ({h['epoch'][best_test]}) | {h['train_acc'][-1]:.2f}% "
                    f"| {h['train_acc'][best_train]:.2f}% ({h['epoch'][best_train]}) | {sum(h['seconds']):.0f} s |")
    return "\n".join(rows) + ("\n\n*train accuracy is the running mean over each epoch's augmented batches, "
                              "measured while the weights change.")


# ---------------------------------------------------------------- seeds and statistics

def trained_on(histories):
    """Where the runs were trained, for figure notes: "trained on CPU (1 threads), torch 2.14.1+cu130"."""
    return "trained on " + " and ".join(sorted({h.get("trained_on", "an unrecorded device") for h in histories}))


def by_name(histories):
    """Histories grouped by configuration name, in first-seen order: {name: [history, ...]}."""
    groups = {}
    for h in histories:
        groups.setdefault(h["name"], []).append(h)
    return groups


def summarize(values):
    """n, mean, sample standard deviation and the half-width of the 95% Student-t interval of the mean.

    With a single value the spread is unknown: std and ci95 are NaN, never a misleading 0.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summarize needs at least one value")
    n, mean = len(values), statistics.fmean(values)
    if n == 1:
        return {"n": 1, "mean": mean, "std": math.nan, "ci95": math.nan}
    std = statistics.stdev(values)
    return {"n": n, "mean": mean, "std": std, "ci95": float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)}


def welch_test(a, b):
    """Welch's t-test of mean(a) - mean(b), not assuming equal variances: (difference, t, df, two-sided p).

    NaN statistics when either side has fewer than two values or both have zero spread.
    """
    sa, sb = summarize(a), summarize(b)
    difference = sa["mean"] - sb["mean"]
    va, vb = sa["std"] ** 2 / sa["n"], sb["std"] ** 2 / sb["n"]
    if math.isnan(va + vb) or va + vb == 0:
        return difference, math.nan, math.nan, math.nan
    t = difference / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (sa["n"] - 1) + vb ** 2 / (sb["n"] - 1))
    return difference, t, df, 2 * float(stats.t.sf(abs(t), df))


def paired_test(a, b):
    """Paired t-test of the differences a[i] - b[i] (run i of each side shares its seed): (mean difference, t, df,
    two-sided p).

    More powerful than Welch's test when runs of the same seed are alike, because the seed-to-seed variation both
    sides share cancels in the differences. NaN statistics with fewer than two pairs or differences without spread.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_test needs one value per seed on each side, got {len(a)} and {len(b)} values")
    d = summarize([x - y for x, y in zip(a, b)])
    if d["n"] < 2 or d["std"] == 0:
        return d["mean"], math.nan, math.nan, math.nan
    t = d["mean"] / (d["std"] / math.sqrt(d["n"]))
    return d["mean"], t, d["n"] - 1, 2 * float(stats.t.sf(abs(t), d["n"] - 1))


def final_and_best(history, key="test_acc"):
    """The last epoch's value and the best epoch's value of `key` (best picked after the fact, so optimistic)."""
    return history[key][-1], max(history[key])


def _mean_sd(values, unit="%", digits=2):
    s = summarize(values)
    return f"{s['mean']:.{digits}f}{unit}" + ("" if s["n"] == 1 else f" +- {s['std']:.{digits}f}")


def _mean_std_ci(values, unit="%", digits=2):
    s = summarize(values)
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}{unit} (1 seed: no spread)"
    return (f"{s['mean']:.{digits}f} +- {s['std']:.{digits}f}{unit} "
            f"[{s['mean'] - s['ci95']:.{digits}f}, {s['mean'] + s['ci95']:.{digits}f}]")


def seed_table(histories):
    """Markdown: per configuration, the number of seeds and mean +- sd [95% interval] of final and best test
    accuracy."""
    rows = ["| configuration | seeds | final test acc: mean +- sd [95% CI] | best test acc: mean +- sd [95% CI] "
            "| final test loss (mean) | time per run (mean) |", "| --- | --- | --- | --- | --- | --- |"]
    for name, runs in by_name(histories).items():
        finals, bests = zip(*(final_and_best(h) for h in runs))
        rows.append(f"| {name} | {len(runs)} | {_mean_std_ci(finals)} | {_mean_std_ci(bests)} "
                    f"| {summarize([h['test_loss'][-1] for h in runs])['mean']:.4f} "
                    f"| {summarize([sum(h['seconds']) for h in runs])['mean']:.0f} s |")
    return "\n".join(rows)


def compare(groups, alpha=0.05, test=welch_test):
    """Every pair of {name: [values]}: `test` (Welch's, or paired_test for lists in the same seed order), and whether
    the difference is real at Bonferroni's threshold.

    Returns a list of dicts with a, b, difference (mean a - mean b), t, df, p, threshold = alpha / number of pairs,
    and verdict: "real" (p < threshold), "noise" (within the seed-to-seed noise) or "untestable" (too few seeds).
    """
    names = list(groups)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    threshold = alpha / max(1, len(pairs))
    results = []
    for a, b in pairs:
        difference, t, df, p = test(groups[a], groups[b])
        verdict = "untestable" if math.isnan(p) else "real" if p < threshold else "noise"
        results.append({"a": a, "b": b, "difference": difference, "t": t, "df": df, "p": p,
                        "threshold": threshold, "verdict": verdict})
    return results


def final_test_accuracies(histories):
    """{configuration name: [final test accuracy of each seed]}."""
    return {name: [h["test_acc"][-1] for h in runs] for name, runs in by_name(histories).items()}


def common_seeds(histories):
    """The seeds every configuration in `histories` has, in order: the pairs of the paired test."""
    groups = [{h["seed"] for h in runs} for runs in by_name(histories).values()]
    return sorted(set.intersection(*groups)) if groups else []


def paired_by_seed(histories, key="test_acc"):
    """{name: [final `key` per seed]} over common_seeds, in seed order: the paired test's input."""
    seeds = common_seeds(histories)
    by_seed = {name: {h["seed"]: h[key][-1] for h in runs} for name, runs in by_name(histories).items()}
    return {name: [values[seed] for seed in seeds] for name, values in by_seed.items()}


def per_seed_table(histories):
    """Markdown: final test accuracy of every run, a row per seed and a column per configuration (the pairs)."""
    paired = paired_by_seed(histories)
    rows = ["| seed | " + " | ".join(paired) + " |", "|" + " --- |" * (len(paired) + 1)]
    for i, seed in enumerate(common_seeds(histories)):
        rows.append(f"| {seed} | " + " | ".join(f"{values[i]:.2f}%" for values in paired.values()) + " |")
    return "\n".join(rows)


def plot_per_seed(histories, path=None, note=None):
    """Final test accuracy of each configuration, a line per seed joining its runs: parallel lines mean the seed moves
    all configurations alike, which the paired test uses."""
    paired = paired_by_seed(histories)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, seed in enumerate(common_seeds(histories)):
        ax.plot(list(paired), [values[i] for values in paired.values()], marker="o", label=f"seed {seed}")
    ax.set(xlabel="configuration", ylabel="final test accuracy (%)", title="Each seed's runs, paired")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, path, note)


def comparison_table(histories, alpha=0.05):
    """Markdown: every pair of configurations, final test accuracy compared with Welch's t-test and, over the seeds
    both have, with the paired t-test on the per-seed differences.

    A difference is called real only when p < alpha / (number of pairs) (Bonferroni), otherwise it is
    within the seed-to-seed noise.
    """
    results = compare(final_test_accuracies(histories), alpha)
    paired = compare(paired_by_seed(histories), alpha, paired_test)
    threshold = results[0]["threshold"] if results else alpha
    rows = [f"| comparison (final test acc) | difference | Welch t | df | p | verdict (real if p < {threshold:.3g}) "
            "| paired t | df | p | verdict, paired |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r, q in zip(results, paired):
        rows.append(f"| {r['a']} vs {r['b']} | {r['difference']:+.3f} points | {r['t']:.2f} | {r['df']:.1f} "
                    f"| {r['p']:.3g} | {_verdict(r)} | {q['t']:.2f} | {q['df']:.0f} | {q['p']:.3g} | {_verdict(q)} |")
    return "\n".join(rows)


def _verdict(result):
    if result["verdict"] == "untestable":
        return "untestable: needs 2+ seeds with some spread on each side"
    if result["verdict"] == "noise":
        return "within seed noise"
    return f"**real**: {result['a'] if result['difference'] > 0 else result['b']} higher"


# ---------------------------------------------------------------- micro-batch sweep

def diverged(history):
    """True for a run that did not learn: its final test loss is not finite or its final test accuracy is below 50%."""
    return not math.isfinite(history["test_loss"][-1]) or history["test_acc"][-1] < 50


def _sweep_points(histories):
    """{name: {micro-batch size: [final test accuracy of each seed that did not diverge]}} and the diverged count."""
    points, failed = {}, {}
    for h in histories:
        size = h["micro_batch_size"]
        points.setdefault(h["name"], {}).setdefault(size, [])
        if diverged(h):
            failed[h["name"], size] = failed.get((h["name"], size), 0) + 1
        else:
            points[h["name"]][size].append(h["test_acc"][-1])
    return points, failed


def sweep_table(histories):
    """Markdown: final test accuracy mean +- sd over seeds, one row per micro-batch size, one column per normalization;
    diverged runs are counted, not averaged in."""
    points, failed = _sweep_points(histories)
    names = list(points)
    sizes = sorted({size for by_size in points.values() for size in by_size})
    rows = ["| micro-batch | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)]
    for size in sizes:
        cells = []
        for name in names:
            values, lost = points[name].get(size, []), failed.get((name, size), 0)
            cell = _mean_sd(values) if values else "-"
            cells.append(cell + (f" ({lost} of {lost + len(values)} diverged)" if lost else ""))
        rows.append(f"| {size} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_micro_batch_sweep(histories, path=None, note=None):
    """Final test error against the micro-batch size, one line per normalization: mean over seeds, bars +-1 sd.

    A diverged run is drawn as an x at the top edge, labelled, so it cannot set the scale of the plot.
    """
    points, failed = _sweep_points(histories)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (name, by_size) in enumerate(points.items()):
        sizes = [s for s in sorted(by_size) if by_size[s]]
        errors = [summarize([100 - acc for acc in by_size[s]]) for s in sizes]
        if sizes:
            ax.errorbar(sizes, [e["mean"] for e in errors], yerr=[0 if e["n"] == 1 else e["std"] for e in errors],
                        color=f"C{i}", capsize=3, marker="o", markersize=4, label=name)
        lost = [s for s in sorted(by_size) if failed.get((name, s))]
        if lost:
            ax.plot(lost, [0.97] * len(lost), "x", color=f"C{i}", markersize=9, transform=ax.get_xaxis_transform(),
                    label=f"{name}: diverged")
    ax.set_xscale("log", base=2)
    if any(any(by_size.values()) for by_size in points.values()):  # nothing to log-scale when every run diverged
        ax.set_yscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set(xlabel="micro-batch size (samples per forward pass; optimizer batch fixed)",
           ylabel="final test error (%)", title="Micro-batch sensitivity (same steps, same samples)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _finish(fig, path, note)


# ---------------------------------------------------------------- what the normalizations do

NORM_LAYERS = (nn.BatchNorm2d, nn.GroupNorm)


def build_model(norm="bn", groups=4, dropout=0.05):
    """Net(norm, groups, dropout); norm="none" gives the same net with every normalization layer replaced by the
    identity: the unnormalized reference of the learning-rate range test.

    Normalization layers draw no random numbers when built, so every variant starts from the same conv weights
    for the same seed.
    """
    if norm != "none":
        return Net(norm, groups, dropout)
    model = Net("bn", groups, dropout)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, NORM_LAYERS):
                setattr(parent, name, nn.Identity())
    return model


def exponential_lr(lr_min, lr_max, steps):
    """The learning rate of step k = 0 .. steps - 1: from lr_min to lr_max by a constant factor per step."""
    return lambda k: lr_min * (lr_max / lr_min) ** (k / max(1, steps - 1))


def smoothed(values, beta=0.9):
    """Bias-corrected exponential moving average of `values` (about the last 1 / (1 - beta) values weigh)."""
    average, out = 0.0, []
    for i, value in enumerate(values, 1):
        average = beta * average + (1 - beta) * value
        out.append(average / (1 - beta ** i))
    return out


def divergence_step(losses, give_back=0.5, min_improvement=0.1):
    """The first step at which the smoothed loss is not finite or has given back more than `give_back` of its best
    improvement on the starting loss (once that improvement was at least `min_improvement` of the start), or None.

    A relative rule, because a net can blow up from a loss of 0.3 as well as from 1.2, while its loss cannot climb
    far above chance (ln 10) once it predicts uniformly.
    """
    values = smoothed(losses)
    lowest = math.inf
    for step, loss in enumerate(values):
        if not math.isfinite(loss):
            return step
        lowest = min(lowest, loss)
        improvement = values[0] - lowest
        if improvement >= min_improvement * values[0] and loss > lowest + give_back * improvement:
            return step
    return None


def lr_range_test(spec, data):
    """Train `build_model(**spec["model"])` for at most one epoch of spec["train_size"] images with the learning rate
    raised exponentially from spec["lr_min"] to spec["lr_max"]; returns {"lr": [...], "loss": [...]} per step.

    Same optimizer (SGD, Nesterov momentum), augmentation and one training loop as the study, no penalty; the loss
    is each batch's, before its step. The whole epoch runs (the curve after divergence shows whether the net
    recovers or collapses to chance) unless the loss stops being a number.
    """
    (train_x, train_y), _ = data
    train_x, train_y = train_x[:spec["train_size"]], train_y[:spec["train_size"]]
    set_seed(spec["seed"])
    model = build_model(**spec["model"]).to(train_x.device)
    steps = len(train_x) // spec["batch_size"]
    optimizer = make_optimizer(model, spec["lr_min"])
    lr_at = exponential_lr(spec["lr_min"], spec["lr_max"], steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: lr_at(k) / spec["lr_min"])
    curve = {"lr": [], "loss": []}
    for batch in batches(train_x, train_y, spec["batch_size"], shuffle=True, drop_last=True):
        curve["lr"].append(optimizer.param_groups[0]["lr"])
        curve["loss"].append(train_epoch(model, optimizer, scheduler, [batch])[0])
        if not math.isfinite(curve["loss"][-1]):
            break
    return curve


LR_RANGE_CODE = (build_model, exponential_lr, lr_range_test)  # what decides a range test's curve


def lr_range_spec(config, seed, batch_size=128, lr_min=1e-3, lr_max=100.0, train_size=60_000, device="cpu"):
    """What sets a learning-rate range test's result, as a JSON-ready dict (its run store key, with LR_RANGE_CODE)."""
    return {"kind": "lr_range_test", "name": config["name"], "model": dict(config["model"]), "seed": seed,
            "batch_size": batch_size, "lr_min": float(lr_min), "lr_max": float(lr_max), "train_size": train_size,
            "device": torch.device(device).type}


def lr_range_or_load(specs, store, data, retrain=False):
    """The curve of every range test in `specs`, loaded from the run store or run here and stored (one JSON each).

    Each curve is {"name", "seed", "lr", "loss", "trained_on"}; a line per test says what was loaded or run.
    """
    curves = []
    for spec in specs:
        path = Path(store) / f"{run_key(spec, LR_RANGE_CODE)}.json"
        entry = None
        if path.exists() and not retrain:
            try:
                entry = json.loads(path.read_text())
                how = f"loaded from the store (run {entry['trained_at']} on {entry['trained_on']})"
            except (ValueError, KeyError) as error:
                print(f"run store: entry {path} is unreadable ({type(error).__name__}: {error}); running it again")
                entry = None
        if entry is None:
            start = time.perf_counter()
            curve = lr_range_test(spec, data)
            entry = {"key": path.stem, "spec": spec, "code_version": training_code_version(*LR_RANGE_CODE),
                     "trained_on": device_name(spec["device"]), "trained_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "seconds": time.perf_counter() - start, "torch": torch.__version__, "curve": curve}
            Path(store).mkdir(parents=True, exist_ok=True)
            _write_atomically(path, json.dumps(entry, indent=1).encode())
            how = f"run now, {entry['seconds']:.0f} s"
        curve = entry["curve"]
        step = divergence_step(curve["loss"])
        where = f"diverged at lr {curve['lr'][step]:.3g}" if step is not None else "did not diverge"
        print(f"{spec['name']:>14} seed {spec['seed']}: {len(curve['loss'])} steps, {where} | {how}", flush=True)
        curves.append({"name": spec["name"], "seed": spec["seed"], **curve,
                       "trained_on": f"{entry['trained_on']}, torch {entry['torch']}"})
    return curves


def range_summary(curve):
    """What one range test showed: its lowest smoothed loss and the learning rate there, the learning rate at which
    it diverged (inf: never), and whether it learned at all (lowest smoothed loss below 90% of chance, ln 10)."""
    loss = smoothed(curve["loss"])
    step = divergence_step(curve["loss"])
    lowest = min(loss)
    return {"lowest": lowest, "best_lr": curve["lr"][loss.index(lowest)],
            "diverged_lr": curve["lr"][step] if step is not None else math.inf, "learned": lowest < 0.9 * math.log(10)}


def divergence_table(curves):
    """Markdown: per network (median over seeds), the lowest smoothed loss and its learning rate, and the learning
    rate at which the loss diverged, also per seed."""
    rows = ["| network | seeds | lowest smoothed loss | at lr | diverged at lr | each seed |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name, runs in by_name(curves).items():
        summaries = [range_summary(c) for c in runs]
        at = [r["diverged_lr"] for r in summaries]
        median = statistics.median(at)
        verdict = ("never learned" if not any(r["learned"] for r in summaries)
                   else f"{median:.3g}" if math.isfinite(median) else "not in the range")
        rows.append(f"| {name} | {len(runs)} | {statistics.median(r['lowest'] for r in summaries):.2f} "
                    f"| {statistics.median(r['best_lr'] for r in summaries):.3g} "
                    f"| {verdict} | {', '.join(f'{lr:.3g}' if math.isfinite(lr) else '-' for lr in at)} |")
    return "\n".join(rows)


def plot_lr_range(curves, path=None, note=None):
    """Smoothed training loss against the learning rate (log-log), a line per run, one colour per network; an x where
    a run diverged."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (name, runs) in enumerate(by_name(curves).items()):
        for j, c in enumerate(runs):
            loss = smoothed(c["loss"])
            ax.plot(c["lr"], loss, color=f"C{i}", linewidth=1, alpha=0.8, label=name if j == 0 else None)
            step = divergence_step(c["loss"])
            if step is not None and math.isfinite(loss[step]):
                ax.plot(c["lr"][step], min(loss[step], 10), "x", color=f"C{i}", markersize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(top=10)
    ax.set(xlabel="learning rate (raised exponentially over one epoch)", ylabel="training loss (smoothed, nats)",
           title="Learning-rate range test (x: diverged)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _finish(fig, path, note)


def _standardize(layer, x):
    """What the normalization `layer` computes from its input `x` before its learned scale and shift (batch
    statistics for BN, as in training)."""
    if isinstance(layer, nn.BatchNorm2d):
        return F.batch_norm(x, None, None, training=True, eps=layer.eps)
    return F.group_norm(x, layer.num_groups, eps=layer.eps)


@torch.no_grad()
def activation_statistics(model, images):
    """Per normalization layer, in order: each channel's mean and sd over the images and pixels (N, H, W) of the
    layer's input and of its normalized output before the learned scale and shift.

    Forward hooks on a copy of the model in training mode (BN with batch statistics, its running averages left
    alone) with dropout off. Returns [{"channels", "before_mean", "before_sd", "after_mean", "after_sd"}, ...].
    """
    model = copy.deepcopy(model).train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    found = []

    def record(layer, inputs, output):
        x = inputs[0]
        z = _standardize(layer, x)
        found.append({"channels": x.shape[1],
                      "before_mean": x.mean((0, 2, 3)).tolist(), "before_sd": x.std((0, 2, 3), correction=0).tolist(),
                      "after_mean": z.mean((0, 2, 3)).tolist(), "after_sd": z.std((0, 2, 3), correction=0).tolist()})

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, NORM_LAYERS)]
    try:
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return found


def _spread(values):
    return f"{min(values):.2f} to {max(values):.2f}"


def _pooled(run, key):
    """The values of `key` ("after_mean", ...) over all channels of all layers of one activation_statistics run."""
    return [v for layer in run["layers"] for v in layer[key]]


def activation_table(activations):
    """Markdown view of [{"name", "weights", "layers": activation_statistics(...)}, ...]: over all channels of all
    normalized layers, the range of the per-channel mean and sd before and after the normalization."""
    rows = ["| network | weights | channel means before | channel sds before | channel means after "
            "| channel sds after |", "| --- | --- | --- | --- | --- | --- |"]
    for run in activations:
        rows.append(f"| {run['name']} | {run['weights']} | " + " | ".join(
            _spread(_pooled(run, key)) for key in ("before_mean", "before_sd", "after_mean", "after_sd")) + " |")
    return "\n".join(rows)


def plot_activation_statistics(activations, path=None, note=None):
    """Each channel's (mean, sd) before (top row) and after (bottom row) the normalization, one column per network,
    one colour per layer; o: trained weights, +: at initialization."""
    names = list(dict.fromkeys(run["name"] for run in activations))
    fig, axes = plt.subplots(2, len(names), figsize=(4 * len(names), 7), sharex="row", sharey="row", squeeze=False)
    for run in activations:
        column, trained = names.index(run["name"]), run["weights"] == "trained"
        for row, side in enumerate(("before", "after")):
            for i, layer in enumerate(run["layers"]):
                axes[row, column].scatter(layer[f"{side}_mean"], layer[f"{side}_sd"], s=14, alpha=0.75,
                                          color=plt.cm.viridis(i / max(1, len(run["layers"]) - 1)),
                                          marker="o" if trained else "+", label=f"layer {i + 1}" if trained else None)
    for column, name in enumerate(names):
        axes[0, column].set_title(f"{name}: before normalization")
        axes[1, column].set_title(f"{name}: after (before scale and shift)")
        for ax in axes[:, column]:
            ax.set(xlabel="channel mean over (N, H, W)")
            ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("channel sd over (N, H, W)")
    axes[0, -1].legend(fontsize=7, title="o trained, + at init", title_fontsize=7)
    return _finish(fig, path, note)


def _epochs(history):
    return f"{history['epoch'][-1]} epoch" + "s" * (history["epoch"][-1] != 1)


def _group_count(history):
    return history["config"]["model"]["groups"]


def _finals_by_group(histories):
    """{group count: {seed: final test accuracy}} of GroupNorm runs."""
    finals = {}
    for h in histories:
        finals.setdefault(_group_count(h), {})[h["seed"]] = h["test_acc"][-1]
    return finals


def group_table(histories, study_groups):
    """Markdown: final test accuracy per GroupNorm group count, and the paired difference from `study_groups`."""
    by_groups = _finals_by_group(histories)
    reference = by_groups.get(study_groups, {})
    rows = [f"| groups | channels per group (8- / 16-channel layers) | seeds | final test acc | paired difference "
            f"from {study_groups} groups (p) |", "| --- | --- | --- | --- | --- |"]
    for groups in sorted(by_groups):
        accs = by_groups[groups]
        seeds = sorted(set(accs) & set(reference))
        cell = "the study's GN" if groups == study_groups else "-"
        if groups != study_groups and len(seeds) > 1:
            d, _, _, p = paired_test([accs[s] for s in seeds], [reference[s] for s in seeds])
            cell = f"{d:+.2f} points (p = {p:.2g})"
        rows.append(f"| {groups}{' (= LN)' if groups == 1 else ''} | {8 // groups} / {16 // groups} | {len(accs)} "
                    f"| {_mean_sd(list(accs.values()))} | {cell} |")
    return "\n".join(rows)


def plot_group_sweep(histories, study_groups, path=None, note=None):
    """Final test accuracy against the GroupNorm group count: the mean over seeds, a thin line per seed (paired
    across group counts), the study's group count marked."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    by_groups = _finals_by_group(histories)
    counts, seeds = sorted(by_groups), sorted({h["seed"] for h in histories})
    for seed in seeds:
        xs = [g for g in counts if seed in by_groups[g]]
        ax.plot(xs, [by_groups[g][seed] for g in xs], color="C2", linewidth=0.8, alpha=0.45, marker=".",
                label="each seed" if seed == seeds[0] else None)
    means = [statistics.fmean(by_groups[g].values()) for g in counts]
    ax.plot(counts, means, color="C2", marker="o", linewidth=2, label="mean over seeds")
    ax.axvline(study_groups, color="0.5", linestyle="--", linewidth=1, label=f"the study's GN ({study_groups} groups)")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xticks(counts)
    ax.set(xlabel="GroupNorm groups (1 = LayerNorm; 8 = one channel per group in 8-channel layers)",
           ylabel="final test accuracy (%)", title=f"GroupNorm group count ({_epochs(histories[0])})")
    ax.grid(alpha=0.3)
    ax.legend()
    return _finish(fig, path, note)


# ---------------------------------------------------------------- what the regularizers did

def near_zero_fraction(model, relative=0.01):
    """Fraction of conv weights whose |w| is below `relative` times the largest |w| of their layer.

    Relative, not absolute: a conv followed by a normalization layer computes the same function at any weight
    scale, so only the size of a weight compared with its layer's weights says whether it matters.
    """
    small = sum((w.abs() < relative * w.abs().max()).sum().item() for w in conv_weights(model))
    return small / sum(w.numel() for w in conv_weights(model))


def regularizer_report(models, data):
    """For each {name: [model, ...]} (one per seed), the near-zero fraction of conv weights and the generalization
    gap of the final models: loss and accuracy on the clean (unaugmented) training set vs the test set.

    Returns {name: {"near_zero": [...], "train_loss": [...], "train_acc": [...], "test_loss": [...],
    "test_acc": [...]}}, one entry per model.
    """
    (train_x, train_y), (test_x, test_y) = data
    report = {}
    for name, runs in models.items():
        rows = report[name] = {"near_zero": [], "train_loss": [], "train_acc": [], "test_loss": [], "test_acc": []}
        for model in runs:
            train_loss, train_acc = evaluate(model, train_x, train_y)
            test_loss, test_acc = evaluate(model, test_x, test_y)
            for key, value in zip(rows, (near_zero_fraction(model), train_loss, train_acc, test_loss, test_acc)):
                rows[key].append(value)
    return report


def regularizer_table(report):
    """Markdown view of regularizer_report: mean +- sd over seeds of each figure and of the train-test gaps."""
    rows = ["| configuration | seeds | near-zero conv weights | clean train acc | test acc "
            "| accuracy gap (train - test) | loss gap (test - train) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in report.items():
        acc_gap = [a - b for a, b in zip(r["train_acc"], r["test_acc"])]
        loss_gap = [b - a for a, b in zip(r["train_loss"], r["test_loss"])]
        rows.append(f"| {name} | {len(r['test_acc'])} | {_mean_sd([100 * f for f in r['near_zero']], '%', 1)} "
                    f"| {_mean_sd(r['train_acc'])} | {_mean_sd(r['test_acc'])} | {_mean_sd(acc_gap, ' pts')} "
                    f"| {_mean_sd(loss_gap, '', 4)} |")
    return "\n".join(rows)


def plot_weight_histograms(models, path=None, note=None):
    """Distribution of |w| over all conv weights (pooled over seeds), log-spaced bins, one outline per configuration."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    bins = torch.logspace(-6, 0.5, 60).numpy()
    for name, runs in models.items():
        weights = torch.cat([w.detach().abs().flatten().cpu() for m in runs for w in conv_weights(m)])
        ax.hist(weights.clamp(min=bins[0]).numpy(), bins=bins, histtype="step", linewidth=1.6,
                weights=torch.full_like(weights, 100 / len(weights)).numpy(), label=name)
    ax.set_xscale("log")
    ax.set(xlabel="|w| of conv weights (values below 1e-6 in the first bin)", ylabel="% of conv weights",
           title="Weight magnitudes")
    ax.grid(alpha=0.3)
    ax.legend()
    return _finish(fig, path, note)


# ---------------------------------------------------------------- findings

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


def findings(histories, reg_histories=(), sweep=(), report=None, curves=(), group_histories=(), study_groups=None,
             activations=(), alpha=0.05):
    """The study's conclusions as Markdown bullets, every number computed from the histories (and the regularizer
    report, the range tests, the group sweep and the activation statistics): which differences are real and which
    are within seed noise, what the sweep and the penalties did, how much learning rate each normalization takes."""
    lines = []
    finals = final_test_accuracies(histories)
    ranked = sorted(finals, key=lambda name: -statistics.fmean(finals[name]))
    lines.append("- **Main study** (final test accuracy, mean +- sd over seeds): " + ", ".join(
        f"{name} {_mean_sd(finals[name])}" for name in ranked) + ".")
    results = compare(finals, alpha)
    paired = compare(paired_by_seed(histories), alpha, paired_test)
    if results:
        lines.append(f"- Pairwise (Welch and paired by seed, real if p < {results[0]['threshold']:.3g}): "
                     + "; ".join(map(_pair_sentence, results, paired)) + ".")
    if sweep:
        points, failed = _sweep_points(sweep)
        for name, by_size in points.items():
            sizes = sorted(by_size)
            small, large = by_size[sizes[0]], by_size[sizes[-1]]
            lost = sum(failed.get((name, s), 0) for s in sizes)
            text = f"- **Micro-batch sweep, {name}**: micro-batch {sizes[0]} {_mean_sd(small) if small else 'diverged'}"
            if len(sizes) > 1:
                text += f", {sizes[-1]} {_mean_sd(large) if large else 'diverged'}"
            if len(sizes) > 1 and len(small) > 1 and len(large) > 1:
                r = compare({str(sizes[0]): small, str(sizes[-1]): large}, alpha)[0]
                text += f"; difference {r['difference']:+.2f} points (Welch p = {r['p']:.2g}, real if p < {alpha})"
            means = [statistics.fmean(by_size[s]) for s in sizes if by_size[s]]
            text += f"; means range over {max(means) - min(means):.2f} points across micro-batch sizes" if means else ""
            lines.append(text + (f"; {lost} run(s) diverged." if lost else "."))
    if reg_histories:
        reg_finals = final_test_accuracies(reg_histories)
        reg_finals = {name: reg_finals.get(name) or finals[name] for name in ("BN", "BN + L1", "BN + L2")
                      if reg_finals.get(name) or finals.get(name)}
        results = [r for r in compare(reg_finals, alpha) if r["a"] == "BN"]
        lines.append("- **Regularizers** (final test accuracy): " + ", ".join(
            f"{name} {_mean_sd(values)}" for name, values in reg_finals.items()) + "; "
            + "; ".join(map(_pair_sentence, results)) + ".")
    if curves:
        lines.append("- **Learning-rate range test** (median over seeds): " + "; ".join(
            _range_sentence(name, runs) for name, runs in by_name(curves).items()) + ".")
    if group_histories:
        by_groups = {g: list(accs.values()) for g, accs in _finals_by_group(group_histories).items()}
        lines.append(f"- **GroupNorm group count** ({_epochs(group_histories[0])}, final test accuracy): "
                     + ", ".join(f"{g} group{'s' * (g > 1)} {_mean_sd(by_groups[g])}" for g in sorted(by_groups))
                     + f"; the study uses {study_groups}.")
    if activations:
        lines.append("- **Activations** (per-channel statistics after the normalization, trained weights): " + "; ".join(
            f"{run['name']} means {_spread(_pooled(run, 'after_mean'))}, sds {_spread(_pooled(run, 'after_sd'))}"
            for run in activations if run["weights"] == "trained") + ".")
    if report:
        lines.append("- Near-zero conv weights (|w| < 1% of the layer's largest): " + ", ".join(
            f"{name} {_mean_sd([100 * f for f in r['near_zero']], '%', 1)}" for name, r in report.items())
            + "; clean train - test accuracy gap: " + ", ".join(
            f"{name} {_mean_sd([a - b for a, b in zip(r['train_acc'], r['test_acc'])], ' pts')}"
            for name, r in report.items()) + ".")
    return "\n".join(lines)


# ---------------------------------------------------------------- plots

def _finish(fig, path, note=None):
    """Lay out, put `note` (where the runs were trained) in the bottom-right corner, save as PNG when `path`."""
    fig.tight_layout()
    if note:
        fig.text(0.995, 0.005, note, ha="right", va="bottom", fontsize=7, color="0.4")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def plot_metric(histories, key, ylabel, title, path=None, ylim=None, ax=None, note=None):
    """`key` ("test_loss", "test_acc", ...) against the epoch: one line per configuration name, the mean over its
    seeds, over a thin line for each seed (a spread that, unlike a +-sd band, stays within the quantity's range)."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4.2))
    for name, runs in by_name(histories).items():
        epochs = runs[0]["epoch"]
        mean = [statistics.fmean(h[key][i] for h in runs) for i in range(len(epochs))]
        label = name if len(runs) == 1 else f"{name} (mean of {len(runs)} seeds; thin: each seed)"
        line, = ax.plot(epochs, mean, marker="o", markersize=3, label=label, zorder=3)
        if len(runs) > 1:
            for h in runs:
                ax.plot(h["epoch"], h[key], color=line.get_color(), linewidth=0.7, alpha=0.45, zorder=2)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend()
    return _finish(fig, path, note)


def plot_train_curves(histories, path=None, note=None):
    """Training loss and training accuracy (running, augmented) of every configuration, side by side."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    plot_metric(histories, "train_loss", "cross-entropy (nats)", "Training loss (running mean per epoch)", ax=left)
    plot_metric(histories, "train_acc", "accuracy (%)", "Training accuracy (running, augmented batches)",
                ax=right)
    return _finish(fig, path, note)


def plot_misclassified(images, mistakes, title, path=None, note=None):
    """A 5x2 grid (5 rows, 2 columns) of misclassified digits, each titled with predicted, actual, probability."""
    fig, axes = plt.subplots(5, 2, figsize=(4.4, 10))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(mistakes["index"]):
            continue
        pixels = (images[mistakes["index"][i], 0] * MNIST_STD + MNIST_MEAN).clamp(0, 1).cpu().numpy()
        ax.imshow(pixels, cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"predicted {mistakes['predicted'][i]} (p={mistakes['probability'][i]:.2f})\n"
                     f"actual {mistakes['actual'][i]}  [#{mistakes['index'][i]}]", fontsize=9)
    fig.suptitle(title)
    return _finish(fig, path, note)
