"""Training throughput of three ways to run this study, side by side in one invocation.

All train the same Net with the same optimizer, one-cycle schedule, batch size and augmentation strength
(rotation up to 7 degrees, shift up to 2 pixels) and test after every epoch:
  classic: torchvision dataset -> PIL RandomAffine -> ToTensor/Normalize -> DataLoader(workers) -> device
  on-device: the whole dataset on the device, augmented in batch with affine_grid/grid_sample there
  parallel: independent on-device runs (different seeds) in --parallel worker processes, one thread each, as
            the notebook's store.train_or_load runs them; throughput is epochs per minute over all workers,
            wall clock including the workers' start and data loading
  study mix: the full default study's training time in one process and in parallel workers, estimated from one
            timed epoch per micro-batch size of the study, weighted by how many epochs the study trains at it
Usage: python benchmark.py [--epochs 2] [--norm bn] [--workers 2] [--parallel 2] [--mix-images 15360]
"""
import argparse
import os
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
    with tempfile.TemporaryDirectory() as store:
        start = time.perf_counter()
        runs = store.train_or_load(specs, store, args.data, workers=args.parallel)
        return time.perf_counter() - start, [h["test_acc"][-1] for _, h in runs]


# Epochs per micro-batch size in the notebook's default study: main study and regularizer runs 25 x 20, the group
# count 20 x 5, the range tests 12 x about 1, and the micro-batch sweep 9 runs x 2 epochs at each size.
STUDY_EPOCHS = {128: 25 * 20 + 20 * 5 + 12 + 9 * 2, 32: 18, 16: 18, 8: 18, 4: 18, 2: 18}


def timed_epoch(micro_batch, seed, images, threads, data_dir, batch_size=128):
    """Seconds for one training epoch of a BN net on the first `images` training digits, in micro-batches."""
    if threads:
        torch.set_num_threads(threads)
    device = utils.get_device()
    (x, y), _ = store.cached_mnist(data_dir, device)
    x, y = x[:images], y[:images]
    utils.set_seed(seed)
    model = Net("bn").to(device)
    optimizer = utils.make_optimizer(model, 0.1)
    scheduler = utils.make_scheduler(optimizer, 0.1, images // batch_size)
    start = time.perf_counter()
    utils.train_epoch(model, optimizer, scheduler, utils.batches(x, y, batch_size, shuffle=True, drop_last=True),
                      micro_batch_size=micro_batch)
    utils.evaluate(model, x[:batch_size], y[:batch_size])  # waits for the device
    return time.perf_counter() - start


def study_mix(args):
    """The full default study's training time, estimated both ways: per micro-batch size, one epoch on --mix-images
    digits in this process (all threads) and --parallel epochs at once in as many workers (one thread each),
    interleaved, scaled to 60,000 digits and weighted by STUDY_EPOCHS. Prints a Markdown table."""
    scale = 60_000 / args.mix_images
    one, parallel = {}, {}
    with joblib.Parallel(n_jobs=args.parallel) as pool:
        pool(joblib.delayed(timed_epoch)(128, seed, args.batch_size, 1, args.data) for seed in range(args.parallel))
        for micro_batch in STUDY_EPOCHS:
            one[micro_batch] = timed_epoch(micro_batch, 1, args.mix_images, None, args.data) * scale
            start = time.perf_counter()
            pool(joblib.delayed(timed_epoch)(micro_batch, seed, args.mix_images, 1, args.data)
                 for seed in range(args.parallel))
            parallel[micro_batch] = (time.perf_counter() - start) * scale / args.parallel
    print(f"\nThe default study's epochs by micro-batch, one epoch each way on {args.mix_images:,} digits, scaled to "
          f"60,000 (this process: {torch.get_num_threads()} threads; parallel: {args.parallel} x 1 thread):\n")
    print("| micro-batch | epochs in the study | one process: s per epoch | parallel: wall s per epoch | speedup |")
    print("| --- | --- | --- | --- | --- |")
    for micro_batch, epochs in STUDY_EPOCHS.items():
        print(f"| {micro_batch} | {epochs} | {one[micro_batch]:.1f} | {parallel[micro_batch]:.1f} "
              f"| {one[micro_batch] / parallel[micro_batch]:.2f}x |")
    total_one = sum(epochs * one[m] for m, epochs in STUDY_EPOCHS.items()) / 3600
    total_parallel = sum(epochs * parallel[m] for m, epochs in STUDY_EPOCHS.items()) / 3600
    print(f"| **full default study** | {sum(STUDY_EPOCHS.values())} | {total_one:.2f} h | {total_parallel:.2f} h "
          f"| **{total_one / total_parallel:.2f}x** |")


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
    parser.add_argument("--mix-images", type=int, default=15_360,
                        help="digits per timed epoch of the study-mix estimate (0: skip it)")
    args = parser.parse_args()

    device = utils.get_device()
    data = utils.load_mnist(args.data, device)
    print(f"{time.strftime('%Y-%m-%d')}: {utils.device_name(device)}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, Net({args.norm!r}), batch {args.batch_size}, {args.epochs} epochs each, "
          f"test pass after every epoch\n")
    results = {path: run(path, data, args, device) for path in ("classic", "on-device")}
    wall, parallel_accuracies = parallel_runs(args, device)
    rows = {path: (", ".join(f"{s:.2f}" for s in seconds), 60 * len(seconds) / sum(seconds), [accuracy])
            for path, (seconds, accuracy) in results.items()}
    rows[f"parallel ({args.parallel} runs at once)"] = (f"{wall:.1f} s wall for {args.parallel} x {args.epochs}",
                                                         60 * args.parallel * args.epochs / wall, parallel_accuracies)
    classic, on_device = rows["classic"][1], rows["on-device"][1]
    print("| training loop | seconds per epoch (each epoch) | epochs per minute | vs classic | vs on-device "
          "| test accuracy after last epoch |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path, (each, rate, accuracies) in rows.items():
        print(f"| {path} | {each} | {rate:.2f} | {rate / classic:.2f}x | {rate / on_device:.2f}x "
              f"| {', '.join(f'{a:.2f}%' for a in accuracies)} |")
    if args.mix_images:
        study_mix(args)


if __name__ == "__main__":
    main()
