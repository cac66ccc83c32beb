"""Behavioural fingerprints: what today's code computes for a run's configuration, so that a run's store key follows
the numbers the code produces, not the way its text is written.

A configuration's fingerprint is a tiny deterministic training through the study's own functions, in float32 on the
CPU as the study trains: the first batch and a third of training images as load_mnist returns them, two seeds side by
side, two epochs of one step (augmentation, dropout masks, the penalties, SGD, the one-cycle schedule), the test and
the clean final evaluation, one training-mode pass over a batch one image short (BatchNorm's last, partial
micro-batch), and the whole learning-rate and momentum trace of the run's real length; for a range test, three steps
of it and its whole learning-rate trace. Two fingerprints match when every number agrees within a relative 1e-4:
processors that round float32 differently in the last bits (1e-7) stay far inside it over two steps, and an edit
that changes what the study computes (an init, a layer, the loss, the augmentation, MNIST's scaling, the evaluation)
moves them far beyond it. What it cannot see: an edit that moves every number of those two steps by less than 1e-4.

The registry (the file "fingerprints" in the run store, JSON) names each fingerprint it has seen: a run's key holds the name of
the fingerprint its configuration matches. A cache there, keyed by the text of the project's modules and the torch
version, maps configurations to names, so that unchanged code computes no fingerprint at all.
"""
import hashlib
import json
import math
import time
from pathlib import Path

import torch

import utils

REGISTRY = "fingerprints"  # JSON, named apart from the entries (<key>.json)
SEEDS = (1, 2)              # trained side by side, as a GPU trains a configuration's seeds
EPOCHS = 2
TEST_IMAGES = 128
REL_TOL, ABS_TOL = 1e-4, 1e-6
PROJECT = Path(__file__).resolve().parent


def configuration(spec):
    """What a fingerprint stands for: the spec without its display name, seed and device (a key holds those apart)."""
    return {k: v for k, v in spec.items() if k not in ("name", "seed", "device")}


def tiny_train_size(batch_size):
    """Images of the fingerprint's training: one full batch and a part of one that each epoch drops."""
    return batch_size + batch_size // 3 + 1


def digest(values):
    """A few numbers that move whenever any of `values` (a sequence of floats) does: count, sum, position-weighted
    sum, sum of squares, first, last, lowest, highest."""
    values = [float(v) for v in values]
    n = len(values)
    return [n, math.fsum(values), math.fsum(k * v for k, v in enumerate(values)) / max(n, 1),
            math.fsum(v * v for v in values), values[0], values[-1], min(values), max(values)] if n else [0]


def tensor_digest(tensors):
    """digest() of each tensor's values, one after another."""
    return [x for t in tensors for x in digest(t.detach().double().flatten().tolist())]


def _tiny_data(data, size):
    """The first `size` training images (by the study's own slicing) and TEST_IMAGES test images of `data`, on the
    CPU."""
    (train_x, train_y), (test_x, test_y) = utils.first_training_images(data, size)
    return ((train_x.cpu(), train_y.cpu()), (test_x[:TEST_IMAGES].cpu(), test_y[:TEST_IMAGES].cpu()))


def _schedule_trace(max_lr, steps):
    """The learning rates and momenta of every step of a run `steps` long, as its scheduler sets them."""
    optimizer = utils.make_optimizer(torch.nn.Linear(1, 1), max_lr)
    scheduler = utils.make_scheduler(optimizer, max_lr, steps)
    lrs, momenta = [], []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        momenta.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()  # no gradients: nothing moves, and the scheduler does not warn
        scheduler.step()
    return digest(lrs) + digest(momenta)


def _range_trace(spec):
    """The learning rate of every step of a range test's real length."""
    steps = spec["train_size"] // spec["batch_size"]
    lr_at = utils.exponential_lr(spec["lr_min"], spec["lr_max"], steps)
    return digest([lr_at(k) for k in range(steps)])


def compute(spec, data, memo=None):
    """The fingerprint of `spec`'s configuration: {part: [numbers]}. `data` is MNIST as load_mnist returns it; `memo`
    (a dict) shares the tiny training and the traces between configurations that differ only in their length."""
    memo = {} if memo is None else memo

    def once(*key, make):
        if key not in memo:
            memo[key] = make()
        return memo[key]

    model = json.dumps(spec["model"], sort_keys=True)
    if spec.get("kind") == "lr_range_test":
        steps = once("range", model, spec["batch_size"], spec["lr_min"],
                     make=lambda: _range_test_steps(spec["model"], data, spec["batch_size"], spec["lr_min"]))
        return {**steps, "trace": _range_trace(spec)}
    training = {k: spec[k] for k in ("l1", "l2", "batch_size", "micro_batch_size", "max_lr")}
    validation = spec.get("validation", 0)
    steps = once("training", model, *training.values(), validation, make=lambda: _training_steps(
        spec["model"], utils.validation_split(data, validation) if validation else data, **training))
    length = spec["epochs"] * (spec["train_size"] // spec["batch_size"])
    trace = once("trace", spec["max_lr"], length, make=lambda: _schedule_trace(spec["max_lr"], length))
    return {**steps, "trace": trace}


def _training_steps(model, data, *, l1, l2, batch_size, micro_batch_size, max_lr):
    """Two one-step epochs of two seeds side by side, their evaluations, weights and a partial micro-batch pass."""
    tiny = _tiny_data(data, tiny_train_size(batch_size))
    config = {"name": "fingerprint", "model": model, "l1": l1, "l2": l2}
    runs = utils.train_model(config, tiny, EPOCHS, batch_size=batch_size, max_lr=max_lr, seeds=SEEDS, device="cpu",
                             progress=False, micro_batch_size=micro_batch_size)
    history, partial = [], []
    for net, h in runs:
        final = h["final"]
        history += [*h["lr"], *h["momentum"], *h["train_loss"], *h["train_acc"], *h["test_loss"], *h["test_acc"],
                    h["params"], final["train_loss"], final["train_acc"], final["test_loss"], final["test_acc"],
                    *final["misclassified"]["index"], *final["misclassified"]["predicted"],
                    *final["misclassified"]["probability"]]
        torch.manual_seed(0)  # the dropout masks of this pass, from torch's global generator
        with torch.no_grad():
            partial += tensor_digest([net.train()(tiny[0][0][:batch_size - 1])])
    weights = tensor_digest(v for net, _ in runs for v in net.state_dict().values())
    return {"history": history, "weights": weights, "partial": partial}


def _range_test_steps(model, data, batch_size, lr_min):
    """Three steps of a range test from the spec's lr_min, raised tenfold (its real lr_max would make three steps
    chaotic, and so different on every processor; the trace holds that)."""
    tiny = _tiny_data(data, 3 * batch_size)
    specs = [{"model": model, "seed": seed, "batch_size": batch_size, "lr_min": lr_min, "lr_max": 10 * lr_min,
              "train_size": 3 * batch_size} for seed in SEEDS]
    return {"curves": [x for curve in utils.lr_range_test(specs, tiny) for x in curve["lr"] + curve["loss"]]}


def matches(a, b):
    """Whether two fingerprints agree within the tolerance, part by part and number by number."""
    return a.keys() == b.keys() and all(
        len(a[part]) == len(b[part]) and all(math.isclose(x, y, rel_tol=REL_TOL, abs_tol=ABS_TOL)
                                             for x, y in zip(a[part], b[part])) for part in a)


def new_name(config, values):
    """A name for a fingerprint no registry holds yet: a hash of its configuration and its numbers to 6 digits."""
    rounded = {part: [float(f"{v:.6g}") for v in numbers] for part, numbers in values.items()}
    return hashlib.sha256(json.dumps([config, rounded], sort_keys=True).encode()).hexdigest()[:16]


def source_version():
    """A hash of the text of the project's modules and of the torch version: the fingerprint cache's key."""
    text = "".join(f"{path.name}\n{path.read_text()}" for path in sorted(PROJECT.glob("*.py")))
    return hashlib.sha256((text + torch.__version__).encode()).hexdigest()[:16]


# Read once, as this module is imported (after model.py and utils.py): the text of the code this process runs, even
# when a file is edited later without restarting it (a notebook's kernel keeps the code it imported).
SOURCE_VERSION = source_version()


def read_registry(folder):
    """The registry of the run store `folder`: {"fingerprints": [...], "cache": {...}}; empty when there is none."""
    path = Path(folder) / REGISTRY
    if not path.exists():
        return {"fingerprints": [], "cache": {}}
    try:
        registry = json.loads(path.read_text())
        if not isinstance(registry.get("fingerprints"), list) or not isinstance(registry.get("cache"), dict):
            raise ValueError("it holds no list of fingerprints and no cache")
        return registry
    except ValueError as error:
        print(f"run store: {path} is unreadable ({error}); fingerprints are computed again, and the runs of code "
              f"whose fingerprint it named are trained again", flush=True)
        return {"fingerprints": [], "cache": {}}


def names(specs, folder, load_data, write):
    """The name of the fingerprint each spec's configuration matches, in order: from the cache when the project's code
    is unchanged, else computed (`load_data()` gives MNIST) and looked up in the registry of the run store `folder`,
    a new name when none matches. `write(path, bytes)` saves the registry when it changed."""
    registry = read_registry(folder)
    cache = registry["cache"].get(SOURCE_VERSION, {})
    registry["cache"] = {SOURCE_VERSION: cache}  # older code's names are in the registry, and found there again
    memo = {}  # shared within one call only: the code may have been reloaded since the last
    found, changed, data = [], False, None
    for spec in specs:
        config = configuration(spec)
        label = json.dumps(config, sort_keys=True)
        if label not in cache:
            data = data or load_data()
            values = compute(spec, data, memo)
            known = [f for f in registry["fingerprints"] if f["config"] == config and matches(f["values"], values)]
            if not known:
                known = [{"name": new_name(config, values), "config": config, "values": values,
                          "computed_on": utils.processor_name(), "torch": torch.__version__,
                          "computed_at": time.strftime("%Y-%m-%d %H:%M:%S")}]
                registry["fingerprints"].append(known[0])
            cache[label], changed = known[0]["name"], True
        found.append(cache[label])
    if changed:
        Path(folder).mkdir(parents=True, exist_ok=True)
        write(Path(folder) / REGISTRY, json.dumps(registry, indent=1, sort_keys=True).encode())
    return found
