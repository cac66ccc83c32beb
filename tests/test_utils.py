import ast
import functools
import gzip
import hashlib
import http.server
import json
import re
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

import plots
import store
import utils
from model import Net
from helpers import fake_history

ROOT = Path(__file__).resolve().parent.parent
RAW = ROOT / "data" / "MNIST" / "raw"  # where CI and conftest put MNIST


def test_mnist_is_loaded_normalized_on_the_device(mnist):
    (train_x, train_y), (test_x, test_y) = mnist
    assert train_x.shape == (60_000, 1, 28, 28) and test_x.shape == (10_000, 1, 28, 28)
    assert train_x.dtype == torch.float32 and train_y.dtype == torch.int64
    assert abs(train_x.mean().item()) < 0.01 and abs(train_x.std().item() - 1) < 0.01
    assert sorted(train_y.unique().tolist()) == list(range(10))
    assert train_x.min().item() == pytest.approx(utils.BACKGROUND)
    assert train_x.max().item() == pytest.approx((1 - utils.MNIST_MEAN) / utils.MNIST_STD)  # a white pixel, 255/255
    assert test_y[:3].tolist() == [7, 2, 1] and train_y[:3].tolist() == [5, 0, 4]  # each split is its own file


def test_load_mnist_reads_data_by_default_and_puts_both_splits_on_the_device_asked(mnist, monkeypatch):
    monkeypatch.chdir(ROOT)
    (_, _), (test_x, test_y) = utils.load_mnist()
    assert test_x.device.type == "cpu" and torch.equal(test_x, mnist[1][0]) and torch.equal(test_y, mnist[1][1])
    splits = utils.load_mnist("data", "meta")  # meta stands in for a GPU
    assert {t.device.type for split in splits for t in split} == {"meta"}


def test_train_model_takes_micro_batches_from_1_to_the_batch_size(tiny):
    [(_, history)] = utils.train_model({"name": "BN", "model": {"norm": "bn"}}, tiny, 1, batch_size=128, progress=False,
                                       micro_batch_size=1)
    assert history["micro_batch_size"] == 1 and len(history["test_acc"]) == 1
    for wrong in (0, 129):
        with pytest.raises(ValueError, match=f"^micro_batch_size must be between 1 and batch_size 128, got {wrong}$"):
            utils.train_model({"name": "BN", "model": {"norm": "bn"}}, tiny, 1, batch_size=128, micro_batch_size=wrong)


def test_the_progress_bar_names_the_run_counts_the_steps_and_ends_with_each_seeds_test_accuracy(tiny, capsys):
    """... and each seed's history gets its share of the epoch's time: the seeds' shares add up to the epoch."""
    start = time.perf_counter()
    runs = utils.train_model({"name": "GN", "model": {"norm": "gn"}}, tiny, 1, seeds=(1, 2))
    elapsed = time.perf_counter() - start
    shares = [history["seconds"][0] for _, history in runs]
    assert shares[0] == shares[1] and elapsed / 2 < sum(shares) <= elapsed
    last = capsys.readouterr().out.split("\r")[-1]  # tqdm redraws its line; the last drawing stays
    accuracies = ", ".join(f"{history['test_acc'][-1]:.2f}%" for _, history in runs)
    assert re.fullmatch(rf"GN seeds 1,2 epoch  1/1: 100%\|#+\| 4/4 \[.*, test acc {accuracies}\]\n", last), last
    assert len(last) == 110 + 1  # ncols: one width, whatever the terminal or notebook
    utils.train_model({"name": "GN", "model": {"norm": "gn"}}, tiny, 1, seeds=(3,))
    assert "GN seed 3 epoch  1/1: 100%" in capsys.readouterr().out


def test_the_device_is_the_gpu_when_there_is_one(monkeypatch):
    for available, expected in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        assert utils.get_device() == torch.device(expected)


def test_the_device_name_counts_the_cpu_threads():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert utils.device_name("cpu") == "CPU (1 thread)"
        torch.set_num_threads(2)
        assert utils.device_name(torch.device("cpu")) == "CPU (2 threads)"
    finally:
        torch.set_num_threads(threads)


def test_the_training_functions_default_to_the_notebooks_settings(tiny, capsys):
    """Called without them, train_model, run_spec and lr_range_spec train what the notebook's defaults train;
    train_model shows its progress, and a config without a model trains the default (BN) Net without penalties."""
    notebook = json.loads((ROOT / "experiments.ipynb").read_text())
    cell = "".join(next(c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))["source"])
    default = {name: ast.literal_eval(re.search(rf'^{name} = from_env\("{name}", ([^)]+)\)', cell, re.M)[1])
               for name in ("BATCH_SIZE", "MAX_LR", "LR_TEST_MIN", "LR_TEST_MAX", "LR_TEST_TRAIN_SIZE")}
    [(model, history)] = utils.train_model({"name": "plain"}, tiny, 1)
    assert "plain seed 1 epoch  1/1" in capsys.readouterr().out
    assert repr(model) == repr(Net("bn")) and history["params"] == 9_752
    config = {"name": "GN", "model": {"norm": "gn"}}
    spec, lr_range = store.run_spec(config, 1, 1), store.lr_range_spec(config, 1)
    for trained in (history, spec):
        assert (trained["batch_size"], trained["max_lr"]) == (default["BATCH_SIZE"], default["MAX_LR"])
    assert (lr_range["batch_size"], lr_range["lr_min"], lr_range["lr_max"], lr_range["train_size"]) == (
        default["BATCH_SIZE"], default["LR_TEST_MIN"], default["LR_TEST_MAX"], default["LR_TEST_TRAIN_SIZE"])


def test_offline_without_files_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr(utils.datasets.MNIST, "mirrors", [f"file://{tmp_path}/no-such-mirror/"])
    with pytest.raises(FileNotFoundError) as error:
        utils.load_mnist(tmp_path)
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "could not be downloaded (RuntimeError)" in message
    assert f"files {', '.join(utils.MNIST_FILES)} into" in message
    assert error.value.__suppress_context__ and error.value._render_traceback_() == [f"MnistMissingError: {message}"]
    assert not (tmp_path / "MNIST").exists()  # the half-made folder of the failed download is gone


def test_a_failed_download_leaves_the_files_that_were_there(tmp_path, monkeypatch):
    monkeypatch.setattr(utils.datasets.MNIST, "mirrors", [f"file://{tmp_path}/no-such-mirror/"])
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-labels-idx1-ubyte").write_bytes((RAW / "t10k-labels-idx1-ubyte").read_bytes())
    with pytest.raises(utils.MnistMissingError):
        utils.load_mnist(tmp_path)
    assert (raw / "t10k-labels-idx1-ubyte").exists()


def test_online_the_missing_files_are_downloaded_with_one_line_of_output(tmp_path, monkeypatch, capfd):
    """torchvision's download, from a mirror on this machine that serves the four files over HTTP (gzip, as MNIST's
    mirrors do): one line says what is fetched, torchvision's own lines and progress bars are kept out of the notebook,
    and the data loads."""
    mirror, resources = tmp_path / "mirror", []
    mirror.mkdir()
    for name in utils.MNIST_FILES:
        packed = gzip.compress((RAW / name).read_bytes(), compresslevel=0)  # stored, not packed: quick
        (mirror / f"{name}.gz").write_bytes(packed)
        resources.append((f"{name}.gz", hashlib.md5(packed).hexdigest()))

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # the server's request log would land in the captured stderr
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=mirror))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(utils.datasets.MNIST, "mirrors", [f"http://127.0.0.1:{server.server_port}/"])
    monkeypatch.setattr(utils.datasets.MNIST, "resources", resources)
    try:
        (train_x, _), (test_x, test_y) = utils.load_mnist(tmp_path / "data")
    finally:
        server.shutdown()
        server.server_close()
    out, err = capfd.readouterr()
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert out == f"downloading MNIST into {raw}/ (4 of its 4 files are missing)\n" and err == ""
    assert len(train_x) == 60_000 and len(test_x) == 10_000 and test_y[:3].tolist() == [7, 2, 1]


def test_augmentation_keeps_shape_and_label_and_changes_the_image(mnist):
    (train_x, train_y), (test_x, test_y) = mnist
    x, y = test_x[:500], test_y[:500]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing for the notebook to show, such as torch's align_corners warning
        augmented = utils.augment(x, torch.rand(500, 3, generator=torch.Generator().manual_seed(0)))
    assert augmented.shape == x.shape
    assert (augmented - x).abs().amax((1, 2, 3)).min() > 0.5  # every image moved

    def nearest_neighbour_labels(images):  # 1-NN on raw pixels against 10,000 training digits
        return train_y[torch.cdist(images.flatten(1), train_x[:10_000].flatten(1)).argmin(1)]

    # still recognizably the same digits: 1-NN on pixels (shift-sensitive) stays well above the 40% it gets
    # on label-breaking changes such as a mirror image; on the originals it gets about 92%
    original = (nearest_neighbour_labels(x) == y).float().mean()
    kept = (nearest_neighbour_labels(augmented) == y).float().mean()
    mirrored = (nearest_neighbour_labels(x.flip(3)) == y).float().mean()
    assert original > 0.9 and kept > 0.7 and mirrored < 0.5
    # no pixel leaves the range of real pixels; the frame corners stay background
    assert augmented.min() >= utils.BACKGROUND - 1e-5
    assert augmented.max() <= (1 - utils.MNIST_MEAN) / utils.MNIST_STD + 1e-5
    assert torch.allclose(augmented[:, :, 0, 0], torch.full((500, 1), utils.BACKGROUND), atol=1e-5)


def test_each_seed_gets_every_digit_at_most_once_an_epoch_in_an_order_of_its_own(mnist):
    (train_x, _), _ = mnist
    x, y = train_x[:100], torch.arange(100)  # labels that name their image
    generators = [utils.seed_stream(seed, "cpu") for seed in (1, 2)]
    batches = list(utils.training_batches(x, y, 32, generators, augmented=False))
    assert [tuple(xb.shape) for xb, _ in batches] == [(32, 2, 28, 28)] * 3  # the last 4 samples dropped
    labels = torch.cat([yb for _, yb in batches])  # (96, 2): a column per seed
    for k in range(2):
        assert len(labels[:, k].unique()) == 96
        assert all(torch.equal(xb[:, k], x[yb[:, k], 0]) for xb, yb in batches)  # channel k holds seed k's digits
    assert not torch.equal(labels[:, 0], labels[:, 1]) and not torch.equal(labels[:, 0], y[:96])
    alone = torch.cat([yb for _, yb in utils.training_batches(x, y, 32, [utils.seed_stream(2, "cpu")])])
    assert torch.equal(alone[:, 0], labels[:, 1])  # seed 2's order does not depend on seed 1 beside it
    assert len(list(utils.training_batches(x[:63], y[:63], 32, generators))) == 1  # one short of a second batch


def test_training_batches_keep_the_images_dtype_through_the_augmentation(tiny):
    """Float64 (the tests' tight-tolerance runs): the augmentation's angles and shifts are drawn in the images' dtype,
    or grid_sample refuses to mix the two."""
    (x, y), _ = tiny
    [(xb, _)] = list(utils.training_batches(x[:32].double(), y[:32], 32, [utils.seed_stream(1, "cpu")]))
    assert xb.dtype == torch.float64 and xb.shape == (32, 1, 28, 28)


def test_misclassified_returns_only_wrong_predictions(tiny):
    _, (test_x, test_y) = tiny
    torch.manual_seed(0)
    model = Net("gn")  # untrained: plenty of mistakes
    log_probs = utils.predict(model, test_x)[:, 0]
    mistakes = utils.misclassified(log_probs, test_y, count=10)
    predicted = log_probs.argmax(1)
    assert len(mistakes["index"]) == 10
    for i, p, a in zip(mistakes["index"], mistakes["predicted"], mistakes["actual"]):
        assert predicted[i] == p != a == test_y[i]
    assert mistakes["probability"] == sorted(mistakes["probability"], reverse=True)


def test_equally_confident_mistakes_come_in_the_order_of_the_test_set():
    """Ties (a run that predicts the same distribution for many digits) must not pick the grid's images at random."""
    log_probs = torch.log_softmax(torch.tensor([[0.0, 3.0] + [0.0] * 8]).repeat(200, 1), 1)  # all say "1"
    labels = torch.zeros(200, dtype=torch.long).index_fill(0, torch.arange(0, 200, 3), 1)  # every third is a 1
    assert utils.misclassified(log_probs, labels, count=100)["index"] == [i for i in range(200) if i % 3][:100]


def test_train_model_history_round_trips_through_json(tiny, tmp_path):
    config = {"name": "GN", "model": {"norm": "gn"}}
    [(_, history)] = utils.train_model(config, tiny, epochs=2, batch_size=64, progress=False)
    assert history["epoch"] == [1, 2] and history["params"] == utils.count_parameters(Net("gn"))
    path = tmp_path / "sub" / "history.json"
    store.save_histories([history], path)
    assert store.load_histories(path) == [history]
    json.dumps(history)  # plain numbers and strings only


def test_training_reduces_the_test_loss(tiny):
    [(_, untrained)] = utils.train_model({"name": "BN", "model": {"norm": "bn"}}, tiny, epochs=1, batch_size=64,
                                         max_lr=1e-9, progress=False)
    [(_, trained)] = utils.train_model({"name": "BN", "model": {"norm": "bn"}}, tiny, epochs=4, batch_size=64,
                                       progress=False)
    assert trained["test_loss"][-1] < untrained["test_loss"][-1] - 0.3
    assert trained["test_acc"][-1] > untrained["test_acc"][-1] + 20


def test_batch_size_larger_than_the_data_is_rejected(tiny):
    with pytest.raises(ValueError, match="batch_size 1024 is larger than the 512 training images"):
        utils.train_model({"name": "LN", "model": {"norm": "ln"}}, tiny, epochs=1, batch_size=1024)


def test_plots_write_png_files(tiny, tmp_path):
    histories = [fake_history("BN + L1", [98.0, 99.5, 99.4]), fake_history("GN", [97.0, 99.0, 99.3])]
    _, (test_x, test_y) = tiny
    mistakes = utils.misclassified(utils.predict(Net("ln"), test_x)[:, 0], test_y)
    for path, draw in [
        (tmp_path / "loss.png", lambda p: plots.plot_metric(histories, "test_loss", "nats", "Test loss", p)),
        (tmp_path / "train.png", lambda p: plots.plot_train_curves(histories, p)),
        (tmp_path / "grid.png", lambda p: plots.plot_misclassified(test_x, mistakes, "LN", p)),
    ]:
        fig = draw(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000
        plots.plt.close(fig)


def test_accuracy_plot_has_labelled_axes_and_a_legend_naming_each_configuration():
    histories = [fake_history("BN + L1", [98.0, 99.5]), fake_history("LN", [97.0, 99.0])]
    fig = plots.plot_metric(histories, "test_acc", "accuracy (%)", "Test accuracy", ylim=(98, 100))
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("epoch", "accuracy (%)", "Test accuracy")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["BN + L1", "LN"]
    assert ax.get_ylim() == (98, 100)
    plots.plt.close(fig)


def test_training_curves_label_their_log_axes_with_plain_numbers():
    """0.02 and 5, not 2x10^-2 and 5x10^0: the rendered notebook showed the mathtext labels as clutter."""
    histories = [dict(fake_history("BN + L1", [90.0, 98.0, 99.0]), train_loss=[0.6, 0.1, 0.02],
                      train_acc=[80.0, 97.0, 99.4])]
    fig = plots.plot_train_curves(histories)
    fig.canvas.draw()
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True) if t.get_text()]
        assert len(labels) >= 3 and all(float(label) > 0 for label in labels), labels
    plots.plt.close(fig)
