"""The card's utilities: device and seeding, MNIST loading and checking, on-device augmentation and batches, the
regularizers and optimizer, the one training loop, prediction and evaluation, and train_model.

The whole dataset lives on the training device as tensors and is augmented there in batch, so the GPU is
never waiting for a CPU data pipeline.
"""
import contextlib
import io
import math
import platform
import shutil
import struct
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision import datasets
from tqdm import tqdm

from model import Net, pack, unpack

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
BACKGROUND = (0.0 - MNIST_MEAN) / MNIST_STD  # a black pixel after normalization


def get_device():
    """The GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device):
    """A human-readable name of `device`, for logs and the README."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'s' * (threads != 1)})"


def processor_name():
    """The CPU's model name (from /proc/cpuinfo where there is one): recorded with each stored run, because two makes
    of processor round float32 differently in the last bits."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown processor"


GPU_SETTINGS = {  # what set_seed sets for a GPU, and so part of the key of every run on one (store.run_key)
    "cudnn.deterministic": True, "cudnn.benchmark": False, "cudnn.allow_tf32": False, "cuda.matmul.allow_tf32": False}


def set_seed(seed):
    """Seed torch's global generator, from which a net draws its initial weights, and make every run fp32 on any
    device and as repeatable as the device allows (GPU_SETTINGS): cuDNN's deterministic kernels and no autotuner, and
    no TF32, which PyTorch uses for convolutions by default on Ampere and newer GPUs (not on a T4, nor on the CPU)."""
    torch.manual_seed(seed)  # CPU and all GPUs
    torch.backends.cudnn.deterministic = GPU_SETTINGS["cudnn.deterministic"]
    torch.backends.cudnn.benchmark = GPU_SETTINGS["cudnn.benchmark"]
    torch.backends.cudnn.allow_tf32 = GPU_SETTINGS["cudnn.allow_tf32"]
    torch.backends.cuda.matmul.allow_tf32 = GPU_SETTINGS["cuda.matmul.allow_tf32"]


def packed_seeds(model, seeds, device, micro_batch=None):
    """The seeds of one configuration set up to train together: one Net(**model) of len(seeds) copies on `device`,
    copy k drawing its initial weights from torch.manual_seed(seeds[k]) and its dropout masks from its seed's stream,
    and those streams (seed_stream), from which the seeds' batches and augmentation are drawn too."""
    nets = []
    for seed in seeds:
        set_seed(seed)
        nets.append(Net(**model, micro_batch=micro_batch))
    packed = pack(nets).to(device)
    generators = [seed_stream(seed, device) for seed in seeds]
    packed.draw_from(generators)
    return packed, generators


def seed_stream(seed, device):
    """The random stream of one seed's run on `device`: its batch order, augmentation and dropout masks, drawn from a
    generator of its own, so that the seed's run is the same whether it trains alone or beside other seeds. Seeded
    2**32 above the seed, so that it never repeats the numbers its initial weights were drawn from."""
    return torch.Generator(torch.device(device)).manual_seed(2**32 + seed)


MNIST_LAYOUT = {  # file name: (magic number, dimensions): the IDX header of each MNIST file
    "train-images-idx3-ubyte": (2051, (60_000, 28, 28)), "train-labels-idx1-ubyte": (2049, (60_000,)),
    "t10k-images-idx3-ubyte": (2051, (10_000, 28, 28)), "t10k-labels-idx1-ubyte": (2049, (10_000,)),
}


MNIST_FILES = tuple(MNIST_LAYOUT)


class ShortError(Exception):
    """An error whose message says everything: IPython and Jupyter show it as one "Name: message" line, without the
    traceback, so that what a user sees first is the reason and the fix."""

    def _render_traceback_(self):  # IPython's hook for how an exception is shown
        return [f"{type(self).__name__}: {self}"]


class MnistMissingError(ShortError, FileNotFoundError):
    """MNIST is not on disk and could not be downloaded."""


class MnistDamagedError(ShortError, ValueError):
    """An MNIST file on disk is not the file it is named after, or not all of it."""


def check_mnist_file(path):
    """Raise MnistDamagedError naming `path`, what is wrong with it and the fix, unless it is a well-formed MNIST IDX
    file.

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
        raise MnistDamagedError(f"{path} is not the MNIST file it is named after: its header is {found.hex()}, MNIST's "
                         f"{path.name} starts with {header.hex()} (magic number {magic}, dimensions {dims}). {fix}")
    size = path.stat().st_size
    if size != expected:
        raise MnistDamagedError(f"{path} is damaged: it has {size:,} bytes, but MNIST's {path.name} has {expected:,} "
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
    missing = [name for name in MNIST_FILES if not (raw / name).exists()]
    if missing:
        download_mnist(root, missing)
    splits = []
    for train in (True, False):
        dataset = datasets.MNIST(root, train=train, download=False)
        images = (dataset.data.float().div(255).sub(MNIST_MEAN).div(MNIST_STD)).unsqueeze(1)
        splits.append((images.to(device), dataset.targets.to(device)))
    return tuple(splits)


def download_mnist(root, missing):
    """Download MNIST into `root`/MNIST/raw with torchvision, quietly; offline, one MnistMissingError that names the
    folder and the files to put there, and no half-made folder left behind."""
    raw, made = Path(root) / "MNIST" / "raw", not (Path(root) / "MNIST").exists()
    print(f"downloading MNIST into {raw}/ ({len(missing)} of its 4 files are missing)", flush=True)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):  # one line per mirror and file
            datasets.MNIST(root, train=True, download=True)
    except Exception as error:  # offline: URLError, RuntimeError, ... from torchvision's downloader
        if made:
            shutil.rmtree(Path(root) / "MNIST", ignore_errors=True)
        raise MnistMissingError(
            f"MNIST is not in {raw}/ and could not be downloaded ({type(error).__name__}). Offline, put the four "
            f"decompressed files {', '.join(MNIST_FILES)} into {raw}/ (README: Offline)") from None


def first_training_images(data, size):
    """`data` ((train_x, train_y), test) with only the first `size` training images: a run's `train_size`."""
    (train_x, train_y), test = data
    return (train_x[:size], train_y[:size]), test


def validation_split(data, size):
    """`data` with its last `size` training images as the test set in place of the test images, never trained on: for
    choosing a setting (a learning rate) without looking at the test set."""
    (train_x, train_y), _ = data
    return (train_x[:-size], train_y[:-size]), (train_x[-size:], train_y[-size:])


def augment(images, uniforms, max_degrees=7.0, max_shift=2.0):
    """Rotate each image by up to `max_degrees` and shift it by up to `max_shift` pixels, all in one batch op; image
    i's angle and shifts are set by uniforms[i], three numbers in [0, 1) that its seed's stream drew.

    Pixels that come in from outside the frame are background (black), as in the original digits.
    """
    spread = uniforms * 2 - 1
    angle = spread[:, 0] * math.radians(max_degrees)
    shift = spread[:, 1:] * (2 * max_shift / images.shape[-1])
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([cos, -sin, shift[:, 0], sin, cos, shift[:, 1]], 1).view(-1, 2, 3)
    grid = F.affine_grid(theta, images.shape, align_corners=False)
    return F.grid_sample(images - BACKGROUND, grid, align_corners=False) + BACKGROUND


def training_batches(images, labels, batch_size, generators, *, augmented=True):
    """One epoch of augmented training batches for the seeds trained together, seed k drawing its batch order and
    augmentation from generators[k]: a seed sees the same batches whether it trains alone or beside others.

    Yields (x, y) for each full batch (the last partial one is dropped): x (batch, seeds, 28, 28) with seed k's
    digits in channel k, as Net(copies=seeds) reads them (for one seed, the usual (batch, 1, 28, 28)); y (batch, seeds).
    """
    n, device, seeds = len(images), images.device, len(generators)
    orders = torch.stack([torch.randperm(n, generator=g, device=device) for g in generators])
    uniforms = torch.stack([torch.rand(n, 3, generator=g, device=device, dtype=images.dtype) for g in generators])
    for start in range(0, n - batch_size + 1, batch_size):
        index = orders[:, start:start + batch_size]  # (seeds, batch)
        x = images[index].flatten(0, 1)
        if augmented:
            x = augment(x, uniforms[:, start:start + batch_size].flatten(0, 1))
        yield x.view(seeds, batch_size, *images.shape[-2:]).transpose(0, 1), labels[index].T


def conv_weights(model):
    """The conv kernels: the only parameters the L1 and L2 penalties act on.

    Norm scales and shifts are left alone: there are few of them, they set the scale of whole channels rather
    than fit the data, and pulling them to zero would switch channels off instead of regularizing them.
    """
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]


def l1_penalty(model):
    """Sum of the absolute values of all conv weights (multiply by the L1 lambda and add to the loss); for seeds
    trained together, the sum of their penalties, whose gradient reaches each seed's weights alone."""
    return sum(w.abs().sum() for w in conv_weights(model))


MOMENTUM = (0.85, 0.95)  # SGD's Nesterov momentum, cycled by the one-cycle schedule opposite to the learning rate


def make_optimizer(model, lr, l2=0.0):
    """SGD with Nesterov momentum, one update call per operation for all parameters (foreach, as on a GPU); L2 acts
    as weight decay `l2` on the conv weights only. The momentum is the scheduler's (MOMENTUM)."""
    decayed = conv_weights(model)
    others = [p for p in model.parameters() if all(p is not w for w in decayed)]
    groups = [{"params": decayed, "weight_decay": l2}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=MOMENTUM[1], nesterov=True, foreach=True)


def make_scheduler(optimizer, max_lr, total_steps):
    """One-cycle schedule, a function of the step only: the learning rate warms up from max_lr / 10 to max_lr over the
    first fifth of the steps, then falls on a cosine to max_lr / 1000; the momentum moves the other way, from 0.95
    down to 0.85 at the peak and back to 0.95."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=0.2,
                                               div_factor=10, final_div_factor=100, cycle_momentum=True,
                                               base_momentum=MOMENTUM[0], max_momentum=MOMENTUM[1])


def train_epoch(model, optimizer, scheduler, loader, *, l1=0.0, on_step=None, accumulation=None):
    """One training pass over `loader`, an iterable of (x, y) batches as training_batches makes them, for the seeds
    that `model` (a Net of as many copies) trains side by side.

    Each batch is one optimizer step on the sum of the seeds' mean losses, so each seed's weights get exactly their
    own gradients. With `accumulation`, the model sees the batch in chunks of that many samples and their
    gradients are summed before the step (gradient accumulation, what a GPU too small for the batch does): the step
    equals the whole batch's for LN and GN, while BN normalizes with each chunk's own statistics. The study's
    micro-batch sweep gets BN's chunk statistics in one pass instead (Net's micro_batch); this is the reference that
    one pass is tested against. Returns ([mean loss per seed], [accuracy % per seed]) over the epoch: running,
    sample-weighted figures while the weights change, of the cross-entropy alone (without the L1 term). The
    scheduler steps once per batch. `on_step()` is called after each step.
    """
    model.train()
    loss_sums, hits, seen = [], [], 0
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        for x_part, y_part in zip(x.split(accumulation or len(y)), y.split(accumulation or len(y))):
            log_probs = model(x_part).view(*y_part.shape, -1)  # (samples, seeds, 10)
            loss_sum = F.nll_loss(log_probs.flatten(0, 1), y_part.flatten(), reduction="none").view_as(y_part).sum(0)
            (loss_sum.sum() / len(y)).backward()
            loss_sums.append(loss_sum.detach())  # tensors: no waiting for the GPU inside the loop
            hits.append((log_probs.argmax(-1) == y_part).sum(0))
        if l1:
            (l1 * l1_penalty(model)).backward()
        optimizer.step()
        scheduler.step()
        seen += len(y)
        if on_step:
            on_step()
    return (torch.stack(loss_sums).sum(0) / seen).tolist(), (100.0 * torch.stack(hits).sum(0) / seen).tolist()


@torch.inference_mode()
def predict(model, images, batch_size=1000):
    """Log-probabilities (N, copies, 10) of each copy of `model` for all of `images` (N, 1, 28, 28), in eval mode, in
    the order given."""
    model.eval()
    copies = model.copies
    return torch.cat([model(images[i:i + batch_size].expand(-1, copies, -1, -1)).view(-1, copies, 10)
                      for i in range(0, len(images), batch_size)])


def evaluate(model, images, labels):
    """[(mean loss, accuracy %)] on a fixed set, one pair per copy of `model` (one for a plain Net): summed
    per-sample cross-entropy / N, and percent correct."""
    log_probs = predict(model, images)
    return [(F.nll_loss(log_probs[:, k], labels, reduction="sum").item() / len(labels),
             100.0 * (log_probs[:, k].argmax(1) == labels).sum().item() / len(labels)) for k in range(model.copies)]


def misclassified(log_probs, labels, count=10):
    """The `count` most confident mistakes among one model's log-probabilities (N, 10): dict of index, predicted,
    actual, probability lists."""
    confidence, predicted = log_probs.exp().max(1)
    wrong = (predicted != labels).nonzero().squeeze(1)
    order = torch.sort(confidence[wrong], descending=True, stable=True).indices[:count]
    index = wrong[order]
    return {"index": index.tolist(), "predicted": predicted[index].tolist(),
            "actual": labels[index].tolist(), "probability": confidence[index].tolist()}


def count_parameters(model):
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_model(config, data, epochs, *, batch_size=128, max_lr=0.1, seeds=(1,), device="cpu", progress=True,
                micro_batch_size=None):
    """Train `Net(**config["model"])` once per seed in `seeds`, all seeds together as one Net of as many copies, for
    `epochs`, testing after each; returns [(model, history), ...], one plain Net and its history per seed.

    Seed s draws its initial weights from torch.manual_seed(s) and everything else from seed_stream(s), so its run
    does not depend on which seeds train beside it. `config` is {"name": ..., "model": Net kwargs, "l1": lambda,
    "l2": lambda}. A history holds plain numbers per epoch (JSON-ready; "seconds" is the seed's share of the epoch's
    time) plus the config, seed, parameter count and the final model's final_evaluation. A `micro_batch_size` below
    `batch_size` makes BatchNorm take its statistics over groups of that many samples (Net's micro_batch, ghost batch
    normalization) in one pass over each batch of `batch_size`.
    """
    (train_x, train_y), (test_x, test_y) = data
    if micro_batch_size is not None and not 1 <= micro_batch_size <= batch_size:
        raise ValueError(f"micro_batch_size must be between 1 and batch_size {batch_size}, got {micro_batch_size}")
    steps = len(train_x) // batch_size
    if steps == 0:
        raise ValueError(f"batch_size {batch_size} is larger than the {len(train_x)} training images")
    ghost = micro_batch_size if micro_batch_size and micro_batch_size < batch_size else None
    model, generators = packed_seeds(config.get("model", {}), seeds, device, ghost)
    l1, l2 = config.get("l1", 0.0), config.get("l2", 0.0)
    optimizer = make_optimizer(model, max_lr, l2)
    scheduler = make_scheduler(optimizer, max_lr, epochs * steps)
    histories = [{"name": config["name"], "config": config, "seed": seed, "seeds_together": len(seeds),
                  "batch_size": batch_size, "micro_batch_size": micro_batch_size or batch_size, "max_lr": max_lr,
                  "params": count_parameters(model) // len(seeds), "epoch": [], "lr": [], "momentum": [], "seconds": [],
                  "train_loss": [], "train_acc": [], "test_loss": [], "test_acc": []} for seed in seeds]
    label = f"{config['name']} seed{'s' * (len(seeds) > 1)} {','.join(map(str, seeds))}"
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        with tqdm(total=steps, desc=f"{label} epoch {epoch:2d}/{epochs}", file=sys.stdout, disable=not progress,
                  mininterval=1.0, ncols=110, ascii=" #") as bar:
            lr, momentum = optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["momentum"]
            loader = training_batches(train_x, train_y, batch_size, generators)
            train_loss, train_acc = train_epoch(model, optimizer, scheduler, loader, l1=l1, on_step=bar.update)
            tests = evaluate(model, test_x, test_y)
            seconds = (time.perf_counter() - start) / len(seeds)
            bar.set_postfix_str(f"test acc {', '.join(f'{acc:.2f}%' for _, acc in tests)}")
        for k, history in enumerate(histories):
            for key, value in zip(("epoch", "lr", "momentum", "seconds", "train_loss", "train_acc", "test_loss",
                                   "test_acc"), (epoch, lr, momentum, seconds, train_loss[k], train_acc[k], *tests[k])):
                history[key].append(value)
    for history, final in zip(histories, final_evaluation(model, data)):
        history["final"] = final
    model.draw_from(None)
    return list(zip(unpack(model), histories))


def final_evaluation(model, data):
    """Per copy of `model`: the final model in eval mode on the clean (unaugmented) training images it trained on and
    on the test set, and its 10 most confident test mistakes: stored with each run, so that the notebook reads them
    instead of recomputing."""
    (train_x, train_y), (test_x, test_y) = data
    test_log_probs = predict(model, test_x)
    return [{"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
             "misclassified": misclassified(test_log_probs[:, k], test_y)}
            for k, ((train_loss, train_acc), (test_loss, test_acc))
            in enumerate(zip(evaluate(model, train_x, train_y), evaluate(model, test_x, test_y)))]


def exponential_lr(lr_min, lr_max, steps):
    """The learning rate of step k = 0 .. steps - 1: from lr_min to lr_max by a constant factor per step."""
    return lambda k: lr_min * (lr_max / lr_min) ** (k / max(1, steps - 1))


def lr_range_test(specs, data):
    """Train Net(**spec["model"]) of each of `specs`, which differ in their seed only, together (one Net of as many
    copies) for at most one epoch of spec["train_size"] images with the learning rate raised exponentially from
    spec["lr_min"] to spec["lr_max"]; returns one {"lr": [...], "loss": [...]} per spec, a point per step.

    Same optimizer (SGD, Nesterov momentum 0.95), augmentation and one training loop as the study, no penalty; the
    loss is each batch's, before its step. The whole epoch runs (the curve after divergence shows whether the net
    recovers or collapses to chance); a seed's curve ends where its loss stops being a number, and the epoch where
    every seed's has. The seeds are side by side in one net, so a seed that diverges does not touch the others.
    """
    spec = specs[0]
    (train_x, train_y), _ = first_training_images(data, spec["train_size"])
    model, generators = packed_seeds(spec["model"], [s["seed"] for s in specs], train_x.device)
    steps = len(train_x) // spec["batch_size"]
    optimizer = make_optimizer(model, spec["lr_min"])
    lr_at = exponential_lr(spec["lr_min"], spec["lr_max"], steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: lr_at(k) / spec["lr_min"])
    curves = [{"lr": [], "loss": []} for _ in specs]
    for batch in training_batches(train_x, train_y, spec["batch_size"], generators):
        lr = optimizer.param_groups[0]["lr"]
        for curve, loss in zip(curves, train_epoch(model, optimizer, scheduler, [batch])[0]):
            if not curve["loss"] or math.isfinite(curve["loss"][-1]):
                curve["lr"].append(lr)
                curve["loss"].append(loss)
        if not any(math.isfinite(curve["loss"][-1]) for curve in curves):
            break
    return curves
