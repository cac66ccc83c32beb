"""How fast the study trains, and why: operators per training step, seconds per seed-step each way of running the
seeds, and the default study's training time from them.

  --ops     operators one training step dispatches (counted with TorchDispatchMode over a whole step: batch
            gathering and augmentation, forward, backward, optimizer and scheduler), for BN, BN + L1, LN, GN and ghost
            BN, one seed alone, 5 and 10 seeds together. On a GPU a step of this small net costs about one launch per
            operator, so operators per seed-step is the GPU's cost; the CPU can count them too.
  default   the --ops table, then seconds per seed-step of a BN step, interleaved over --rounds rounds (this shared
            machine drifts between minutes): one seed alone and 5 together in this process (all its threads), and
            on a CPU the same in --parallel worker processes of one thread each; then the default study's training
            time each way (test passes not included).
  --loops   the classic DataLoader loop (PIL augmentation, worker processes) against the on-device loop, --epochs each.
Usage: python benchmark.py [--device cuda] [--quick] [--ops] [--loops] [--parallel 2] [--steps 20] [--rounds 3]
"""
import argparse
import itertools
import os
import statistics
import time

import joblib
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import store
import utils

KINDS = {  # name: (Net kwargs, L1 lambda)
    "BN": ({"norm": "bn"}, 0.0), "BN + L1": ({"norm": "bn"}, 5e-5), "LN": ({"norm": "ln"}, 0.0),
    "GN": ({"norm": "gn"}, 0.0), "ghost BN (micro-batch 16)": ({"norm": "bn", "micro_batch": 16}, 0.0),
}
TOGETHER = (1, 5, 10)
STEPS_PER_EPOCH = 60_000 // 128
STUDY_EPOCHS = (30 * 20 + 20 * 20 + 50 * 4 + 20 * 20  # main (3 x 10 seeds), BN and BN + L2, micro-batch sweep, 2 and 8 groups
                + 8 * 20 + 5 * 8 * 5 // 6  # the control, 8 seeds, and its learning rates (8 epochs of 50,000 images)
                + 15 * (1 + 2 + 8) + 5 * (1 + 2 + 4 + 8)  # the budgets (BN, LN, GN at 4 epochs are the sweep's)
                + 15 * 1)  # the range tests; 1 and 4 groups are the main study's LN and GN runs


class OperatorCount(TorchDispatchMode):
    """Counts every operator dispatched while it is active (views and in-place updates included)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def training_step(kind, seeds, device, data_dir, threads=None):
    """A function that runs one training step of `seeds` seeds of `kind` together (batch 128), as train_model's loop
    runs it; one step has run already (warm-up)."""
    if threads:
        torch.set_num_threads(threads)
    model_kwargs, l1 = KINDS[kind]
    (x, y), _ = store.cached_mnist(data_dir, torch.device(device))
    net = {k: v for k, v in model_kwargs.items() if k != "micro_batch"}
    model, generators = utils.packed_seeds(net, range(1, seeds + 1), device, model_kwargs.get("micro_batch"))
    optimizer = utils.make_optimizer(model, 0.1)
    scheduler = utils.make_scheduler(optimizer, 0.1, 10_000)
    batches = (batch for _ in itertools.count() for batch in utils.training_batches(x, y, 128, generators))

    def step():  # the batch's gathering and augmentation included; train_epoch ends in .tolist(): the step is done
        utils.train_epoch(model, optimizer, scheduler, itertools.islice(batches, 1), l1=l1)

    step()
    return step


def count_operators(kind, seeds, device, data_dir):
    """Operators dispatched by one whole training step of `seeds` seeds of `kind` together."""
    step = training_step(kind, seeds, device, data_dir)
    with OperatorCount() as counted:
        step()
    return counted.count


def operator_table(device, data_dir):
    rows = ["| kind | seeds together | operators per step | operators per seed-step |", "| --- | --- | --- | --- |"]
    for kind in KINDS:
        for seeds in TOGETHER:
            count = count_operators(kind, seeds, device, data_dir)
            rows.append(f"| {kind} | {seeds} | {count} | {count / seeds:.0f} |")
    return "\n".join(rows)


def seconds_per_step(kind, seeds, steps, device, data_dir, threads=None):
    """Median seconds of one training step of `seeds` seeds together, over `steps` steps after the warm-up."""
    step = training_step(kind, seeds, device, data_dir, threads)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def step_times(args, device):
    """{(way, seeds): seconds per seed-step} of a BN step, interleaved over --rounds rounds: "one process" (all its
    threads) and, on a CPU, "N workers" (N processes of one thread, each training its own seeds; their seeds together
    per second of wall clock)."""
    workers = args.parallel if device.type == "cpu" and args.parallel > 1 else 0
    pool = joblib.Parallel(n_jobs=workers) if workers else None
    found = {}
    for _ in range(args.rounds):
        for seeds in TOGETHER:
            found.setdefault(("one process", seeds), []).append(
                seconds_per_step("BN", seeds, args.steps, device, args.data) / seeds)
            if pool:
                each = pool(joblib.delayed(seconds_per_step)("BN", seeds, args.steps, device.type, args.data, 1)
                            for _ in range(workers))
                found.setdefault((f"{workers} workers x 1 thread", seeds), []).append(max(each) / (workers * seeds))
    return {key: statistics.median(values) for key, values in found.items()}


def report_speed(args, device):
    times = step_times(args, device)
    print(f"\nSeconds per seed-step of a BN step (batch 128), median of {args.steps} steps x {args.rounds} interleaved "
          f"rounds, {utils.device_name(device)} in one process; workers: one thread each, all at once:\n")
    print("| way | seeds together | ms per seed-step | the default study's training |")
    print("| --- | --- | --- | --- |")
    fastest = min(times, key=times.get)
    for (way, seeds), seconds in times.items():
        hours = STUDY_EPOCHS * STEPS_PER_EPOCH * seconds / 3600
        mark = " (fastest)" if (way, seeds) == fastest else ""
        print(f"| {way} | {seeds} | {1000 * seconds:.1f}{mark} | {hours:.2f} h |")
    print(f"\nThe study: {STUDY_EPOCHS} seed-epochs of {STEPS_PER_EPOCH} steps, every step priced as a BN step (LN and GN"
          " steps cost a little less, ghost BN steps a little more); test passes not included.")


def classic_loaders(root, batch_size, workers, device):
    """Train and test DataLoaders with PIL augmentation, as most course projects of this study build them."""
    normalize = [transforms.ToTensor(), transforms.Normalize((utils.MNIST_MEAN,), (utils.MNIST_STD,))]
    train_tf = transforms.Compose([transforms.RandomAffine(degrees=7, translate=(2 / 28, 2 / 28))] + normalize)
    train = datasets.MNIST(root, train=True, download=True, transform=train_tf)
    test = datasets.MNIST(root, train=False, download=True, transform=transforms.Compose(normalize))
    options = {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": workers > 0}
    return (DataLoader(train, batch_size, shuffle=True, drop_last=True, **options),
            DataLoader(test, 1000, shuffle=False, **options))


def compare_loops(args, device):
    """The classic DataLoader loop and the on-device loop, one BN net, --epochs each: a Markdown table."""
    (train_x, train_y), (test_x, test_y) = utils.load_mnist(args.data, device)
    train_loader, test_loader = classic_loaders(args.data, 128, args.workers, device)
    rows = []
    for path in ("classic", "on-device"):
        model, [stream] = utils.packed_seeds({"norm": "bn"}, [1], device)
        optimizer = utils.make_optimizer(model, 0.1)
        scheduler = utils.make_scheduler(optimizer, 0.1, args.epochs * STEPS_PER_EPOCH)
        seconds = []
        for _ in range(args.epochs):
            start = time.perf_counter()
            if path == "classic":
                loader = ((x.to(device, non_blocking=True), y.to(device, non_blocking=True)[:, None])
                          for x, y in train_loader)
                utils.train_epoch(model, optimizer, scheduler, loader)
                model.eval()
                with torch.no_grad():
                    hits = sum((model(x.to(device)).argmax(1) == y.to(device)).sum().item() for x, y in test_loader)
                accuracy = 100.0 * hits / len(test_loader.dataset)
            else:
                utils.train_epoch(model, optimizer, scheduler, utils.training_batches(train_x, train_y, 128, [stream]))
                [(_, accuracy)] = utils.evaluate(model, test_x, test_y)
            seconds.append(time.perf_counter() - start)
        rows.append((path, seconds, accuracy))
    print(f"\nNet('bn'), batch 128, {args.epochs} epoch(s) each, test pass after every epoch\n")
    print("| training loop | seconds per epoch (each epoch) | epochs per minute | test accuracy after last epoch |")
    print("| --- | --- | --- | --- |")
    for path, seconds, accuracy in rows:
        print(f"| {path} | {', '.join(f'{s:.2f}' for s in seconds)} | {60 * len(seconds) / sum(seconds):.2f} "
              f"| {accuracy:.2f}% |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", action="store_true", help="only the operator counts")
    parser.add_argument("--loops", action="store_true", help="also the classic DataLoader loop against the on-device one")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per loop (--loops)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (classic loop)")
    parser.add_argument("--parallel", type=int, default=os.cpu_count(), help="worker processes (on a CPU)")
    parser.add_argument("--data", default="data", help="MNIST root folder (MNIST/raw inside)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the GPU if there is one)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per way and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the step timing")
    parser.add_argument("--quick", action="store_true", help="5 steps, 1 round: a minute, not a measurement")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 5, 1
    device = torch.device(args.device) if args.device else utils.get_device()
    utils.set_seed(0)  # fp32 and the cuDNN settings of the study
    print(f"{time.strftime('%Y-%m-%d %H:%M')}: {utils.device_name(device)}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}\n")
    print(operator_table(device, args.data))
    if not args.ops:
        report_speed(args, device)
    if args.loops:
        compare_loops(args, device)


if __name__ == "__main__":
    main()
