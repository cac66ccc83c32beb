import pytest
import torch

import store
import utils


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST from data/MNIST/raw, on the CPU."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return utils.load_mnist("data", "cpu")


@pytest.fixture(scope="session")
def tiny(mnist):
    """512 training and 256 test digits: enough for a few real training steps in a second."""
    (train_x, train_y), (test_x, test_y) = mnist
    return (train_x[:512], train_y[:512]), (test_x[:256], test_y[:256])


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state, so a pass or a failure repeats."""
    torch.manual_seed(0)


@pytest.fixture
def tiny_store(monkeypatch, tiny):
    """The run store trains on `tiny` in this process: its tests need real runs, not a pass over 10,000 test digits."""
    monkeypatch.setattr(store, "cached_mnist", lambda root, device: tiny)
