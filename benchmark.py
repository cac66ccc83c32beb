"""Training throughput of three ways to run this study, side by side in one invocation.

All train the same Net with the same optimizer, one-cycle schedule, batch size and augmentation strength
(rotation up to 7 degrees, shift up to 2 pixels) and test after every epoch:
  classic: torchvision dataset -> PIL RandomAffine -> ToTensor/Normalize -> DataLoader(workers) -> device
  on-device: the whole dataset on the device, augmented in batch with affine_grid/grid_sample there
  parallel: independent on-device runs (different seeds) in --parallel worker processes, one thread each, as
            the notebook's store.train_or_load runs them; throughput is epochs per minute over all workers,
            wall clock including the workers' start and data loading
  sweep steps: one optimizer step of 128 digits with BatchNorm statistics per micro-batch of 1 to 128, both ways
            (ghost batches in one pass, gradient accumulation over 128 / m passes), interleaved, in this process and
            in --parallel workers; then the default study's training time both ways, before and after ghost batches
Usage: python benchmark.py [--device cuda] [--quick] [--epochs 2] [--parallel 2] [--steps 20] [--rounds 3]
"""
import argparse
import os
import statistics
import tempfile
import time

import joblib
import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import store
import utils
from model import Net


def classic_loaders(root, batch_size, workers, device):
    """Train and test DataLoaders with PIL augmentation, as most course projects of this study build them."""
    normalize = [transforms.ToTensor(), transforms.Normalize((utils.MNIST_MEAN,), (utils.MNIST_STD,))]
    train_tf = transforms.Compose([transforms.RandomAffine(degrees=7, translate=(2 / 28, 2 / 28))] + normalize)
    train = datasets.MNIST(root, train=True, download=True, transform=train_tf)
    test = datasets.MNIST(root, train=False, download=True, transform=transforms.Compose(normalize))
    options = {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": workers > 0}
    return (DataLoader(train, batch_size, shuffle=True, drop_last=True, **options),
            DataLoader(test, 1000, shuffle=False, **options))


def run(path, data, args, device):
    """Train one model along `path` ("classic" or "on-device"); returns (seconds per epoch list, test acc)."""
    utils.set_seed(args.seed)
    model = Net(args.norm).to(device)
    optimizer = utils.make_optimizer(model, args.max_lr)
    (train_x, train_y), (test_x, test_y) = data
    if path == "classic":
        train_loader, test_loader = classic_loaders(args.data, args.batch_size, args.workers, device)
        steps = len(train_loader)
    else:
        steps = len(train_x) // args.batch_size
    scheduler = utils.make_scheduler(optimizer, args.max_lr, args.epochs * steps)
    seconds, accuracy = [], 0.0
    for _ in range(args.epochs):
        start = time.perf_counter()
        if path == "classic":
            to_device = ((x.to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in train_loader)
            utils.train_epoch(model, optimizer, scheduler, to_device, args.l1, augment_batch=None)
            model.eval()
            with torch.no_grad():
                hits = sum((model(x.to(device)).argmax(1) == y.to(device)).sum().item() for x, y in test_loader)
            accuracy = 100.0 * hits / len(test_loader.dataset)
        else:
            loader = utils.batches(train_x, train_y, args.batch_size, shuffle=True, drop_last=True)
            utils.train_epoch(model, optimizer, scheduler, loader, args.l1)
            accuracy = utils.evaluate(model, test_x, test_y)[1]  # .item() inside: waits for the device
        seconds.append(time.perf_counter() - start)
    return seconds, accuracy


def parallel_runs(args, device):
    """Train --parallel runs of --epochs epochs at once in as many workers; returns (wall seconds, test accuracies)."""
    config = {"name": args.norm.upper(), "model": {"norm": args.norm}, "l1": args.l1}
    specs = [store.run_spec(config, args.seed + i, args.epochs, args.batch_size, args.max_lr, device)
             for i in range(args.parallel)]
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        runs = store.train_or_load(specs, folder, args.data, workers=args.parallel)
        return time.perf_counter() - start, [h["test_acc"][-1] for _, h in runs]


SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
STEPS_PER_EPOCH = 60_000 // 128
# Epochs per micro-batch size of the default study: main study and regularizer runs 25 x 20, the group count 20 x 5,
# the range tests 12 x 1, and the micro-batch sweep: before ghost batches 3 normalizations x 3 seeds x 2 epochs at
# 2, 4, 8, 16, 32 and 128 (gradient accumulation); now BN x 5 seeds x 4 epochs at 1 to 128 and LN, GN x 5 x 4 at 128.
OLD_STUDY = {128: 25 * 20 + 20 * 5 + 12 + 9 * 2, 32: 18, 16: 18, 8: 18, 4: 18, 2: 18}
NEW_STUDY = {m: 5 * 4 for m in SIZES[:-1]} | {128: 25 * 20 + 20 * 5 + 12 + 3 * 5 * 4}


def step_seconds(micro_batch, way, steps, device, data_dir, threads=None, batch_size=128):
    """Median seconds of one optimizer step of the BN net on a batch of `batch_size` digits, BatchNorm statistics
    over `micro_batch` samples: way "ghost" in one pass (Net's micro_batch), "accumulation" in batch / micro_batch
    forward and backward passes (train_epoch's micro_batch_size). The first step is a warm-up and not counted."""
    if threads:
        torch.set_num_threads(threads)
    (x, y), _ = store.cached_mnist(data_dir, torch.device(device))
    utils.set_seed(1)
    ghost = micro_batch if way == "ghost" and micro_batch < batch_size else None
    model = Net("bn", micro_batch=ghost).to(device)
    optimizer = utils.make_optimizer(model, 0.1)
    scheduler = utils.make_scheduler(optimizer, 0.1, steps + 1)
    batch = [(x[:batch_size], y[:batch_size])]
    seconds = []
    for _ in range(steps + 1):
        start = time.perf_counter()  # train_epoch ends in .item(): the step has finished on the device
        utils.train_epoch(model, optimizer, scheduler, batch, micro_batch_size=micro_batch if way == "accumulation"
                          else None)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[1:])


def sweep_steps(args, device):
    """Each micro-batch size both ways, interleaved over --rounds rounds (this shared machine drifts between minutes):
    in this process with all its threads and, on a CPU, in --parallel workers at once with one thread each (the
    seconds per step of all workers together). Returns {(way, size): (one process s, parallel s or None)}."""
    one, parallel = {}, {}
    pool = joblib.Parallel(n_jobs=args.parallel) if device.type == "cpu" and args.parallel > 1 else None
    if pool:
        pool(joblib.delayed(step_seconds)(128, "ghost", 1, device.type, args.data, 1) for _ in range(args.parallel))
    for _ in range(args.rounds):
        for size in SIZES:
            for way in ("ghost", "accumulation"):
                one.setdefault((way, size), []).append(step_seconds(size, way, args.steps, device, args.data))
                if pool:
                    each = pool(joblib.delayed(step_seconds)(size, way, args.steps, device.type, args.data, 1)
                                for _ in range(args.parallel))
                    parallel.setdefault((way, size), []).append(max(each) / args.parallel)
    return {key: (statistics.median(one[key]), statistics.median(parallel[key]) if parallel else None) for key in one}


def study_hours(study, way, times, which):
    """Training hours of `study` ({micro-batch: epochs}) from the per-step times, `which` 0: one process, 1: parallel."""
    return sum(epochs * STEPS_PER_EPOCH * times[way, size][which] for size, epochs in study.items()) / 3600


def report_sweep(args, device):
    times = sweep_steps(args, device)
    plain = times["ghost", 128][0]  # at 128 the ghost layer is plain BatchNorm2d: the batch-128 step
    print(f"\nOne optimizer step of 128 digits, BatchNorm statistics per micro-batch, median of {args.steps} steps x "
          f"{args.rounds} interleaved rounds, this process ({utils.device_name(device)})"
          + (f" and {args.parallel} workers x 1 thread (per step, all workers together)" if times[
              "ghost", 128][1] else "") + ":\n")
    print("| micro-batch | ghost: ms per step | vs batch-128 step | accumulation: ms per step | vs batch-128 step "
          "| ghost, parallel: ms | accumulation, parallel: ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for size in SIZES:
        (ghost, ghost_par), (acc, acc_par) = times["ghost", size], times["accumulation", size]
        par = (f"{1000 * ghost_par:.0f} | {1000 * acc_par:.0f}" if ghost_par else "- | -")
        print(f"| {size} | {1000 * ghost:.0f} | {ghost / plain:.2f}x | {1000 * acc:.0f} | {acc / plain:.2f}x | {par} |")
    print(f"\nThe default study's training time from these steps ({STEPS_PER_EPOCH} steps an epoch, test passes not "
          "included):\n")
    print("| workload | sweep steps | epochs | one process | parallel |")
    print("| --- | --- | --- | --- | --- |")
    before, now = "before (6 sizes x 3 norms x 3 seeds x 2 epochs)", "now (BN at 8 sizes, LN and GN at 128, x 5 x 4)"
    for label, study, way in ((before, OLD_STUDY, "accumulation"), (now, NEW_STUDY, "accumulation"),
                              (now, NEW_STUDY, "ghost")):
        par = f"{study_hours(study, way, times, 1):.2f} h" if times["ghost", 128][1] else "-"
        print(f"| {label} | {way} | {sum(study.values())} | {study_hours(study, way, times, 0):.2f} h | {par} |")


def compare_loops(args, device):
    """The classic DataLoader loop, the on-device loop and parallel on-device runs, --epochs each: a Markdown table."""
    data = utils.load_mnist(args.data, device)
    print(f"Net({args.norm!r}), batch {args.batch_size}, {args.epochs} epochs each, test pass after every epoch\n")
    results = {path: run(path, data, args, device) for path in ("classic", "on-device")}
    rows = {path: (", ".join(f"{s:.2f}" for s in seconds), 60 * len(seconds) / sum(seconds), [accuracy])
            for path, (seconds, accuracy) in results.items()}
    if args.parallel > 1:
        wall, parallel_accuracies = parallel_runs(args, device)
        rows[f"parallel ({args.parallel} runs at once)"] = (f"{wall:.1f} s wall for {args.parallel} x {args.epochs}",
                                                             60 * args.parallel * args.epochs / wall,
                                                             parallel_accuracies)
    classic, on_device = rows["classic"][1], rows["on-device"][1]
    print("| training loop | seconds per epoch (each epoch) | epochs per minute | vs classic | vs on-device "
          "| test accuracy after last epoch |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path, (each, rate, accuracies) in rows.items():
        print(f"| {path} | {each} | {rate:.2f} | {rate / classic:.2f}x | {rate / on_device:.2f}x "
              f"| {', '.join(f'{a:.2f}%' for a in accuracies)} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--norm", default="bn", choices=["bn", "ln", "gn"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-lr", type=float, default=0.1)
    parser.add_argument("--l1", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (classic loop)")
    parser.add_argument("--parallel", type=int, default=os.cpu_count(), help="parallel runs (parallel mode)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", default="data", help="MNIST root folder (MNIST/raw inside)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the GPU if there is one)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per micro-batch size and way")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the micro-batch timing")
    parser.add_argument("--quick", action="store_true", help="1 epoch, 5 steps, 1 round: minutes, not a measurement")
    parser.add_argument("--sweep-only", action="store_true", help="only the micro-batch steps and the study estimate")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.steps, args.rounds = 1, 5, 1

    device = torch.device(args.device) if args.device else utils.get_device()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}: {utils.device_name(device)}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}")
    if not args.sweep_only:
        compare_loops(args, device)
    report_sweep(args, device)


if __name__ == "__main__":
    main()
