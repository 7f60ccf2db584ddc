"""Datasets: real MNIST files verified by checksum, loaded exactly as torchvision's transforms
would load them, and clear errors where a dataset cannot be prepared."""

from __future__ import annotations

import io
import pickle
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from optbench.data import in_memory, offline, prepare
from optbench.errors import ConfigError

from conftest import compose_config


def test_prepared_mnist_files_are_byte_identical_to_the_originals(data_dir):
    raw = data_dir / "MNIST" / "raw"
    assert prepare._idx_problems("mnist", raw) == {}
    assert torchvision.datasets.MNIST(str(data_dir), train=True).data.shape == (60000, 28, 28)


def test_loaded_tensors_equal_torchvisions_transforms(data_dir):
    """The tensors the engine trains on equal ToTensor (+ Normalize) applied image by image."""
    dataset_cfg = compose_config("experiment=examples_cnn").dataset
    tensors = in_memory.load(dataset_cfg, data_dir, torch.device("cpu"))
    transform = torchvision.transforms.Compose(
        [torchvision.transforms.ToTensor(), torchvision.transforms.Normalize((0.1307,), (0.3081,))]
    )
    train = torchvision.datasets.MNIST(str(data_dir), train=True, transform=transform)
    test = torchvision.datasets.MNIST(str(data_dir), train=False, transform=transform)
    for i in (0, 1, 12345, 59999):
        image, label = train[i]
        torch.testing.assert_close(tensors.train_x[i], image, rtol=0, atol=0)
        assert tensors.train_y[i].item() == label
    image, label = test[9999]
    torch.testing.assert_close(tensors.test_x[9999], image, rtol=0, atol=0)
    assert tensors.test_y[9999].item() == label
    assert tensors.train_x.shape == (60000, 1, 28, 28) and tensors.test_x.shape == (
        10000,
        1,
        28,
        28,
    )


def test_train_size_keeps_the_first_examples_and_unscaled_pixels_lie_in_0_1(data_dir):
    dataset_cfg = compose_config("dataset.train_size=500").dataset
    tensors = in_memory.load(dataset_cfg, data_dir, torch.device("cpu"))
    reference = torchvision.datasets.MNIST(str(data_dir), train=True)
    assert len(tensors.train_x) == 500
    assert torch.equal(tensors.train_y, reference.targets[:500])
    assert torch.equal(tensors.train_x[:, 0], reference.data[:500].float() / 255)
    assert tensors.train_x.min() == 0 and tensors.train_x.max() == 1


def test_a_corrupted_file_is_detected_and_prepared_again(data_dir, tmp_path):
    shutil.copytree(data_dir / "MNIST", tmp_path / "MNIST")
    labels = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-100])  # truncated
    problem = "t10k-labels-idx1-ubyte fails its MD5 check (corrupted or truncated)"
    assert prepare._idx_problems("mnist", labels.parent) == {"t10k-labels-idx1-ubyte": problem}
    messages = []
    prepare.prepare("mnist", tmp_path, log=messages.append)
    assert prepare._idx_problems("mnist", labels.parent) == {}
    assert any("preparing it again" in m for m in messages)


def test_the_data_pickle_loader_admits_numpy_arrays_only():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    loaded = offline.NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(array, protocol=4))).load()
    np.testing.assert_array_equal(loaded, array)
    evil = pickle.dumps(shutil.rmtree, protocol=2)  # any other callable must be refused
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        offline.NumpyOnlyUnpickler(io.BytesIO(evil)).load()


def test_idx_writer_matches_the_format_torchvision_reads(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    path = tmp_path / "images-idx3-ubyte"
    offline.write_idx(path, images)
    read = torchvision.datasets.mnist.read_image_file(str(path))
    assert np.array_equal(read.numpy(), images)


def _network_reachable() -> bool:
    try:
        socket.create_connection(("www.cs.toronto.edu", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(_network_reachable(), reason="would download CIFAR-10 for real")
def test_cifar10_without_network_says_which_archive_to_put_where(tmp_path):
    with pytest.raises(ConfigError) as error:
        prepare.prepare("cifar10", tmp_path)
    message = str(error.value)
    assert "cifar-10-python.tar.gz" in message and str(tmp_path) in message
    assert "\n" not in message


def test_unknown_dataset_and_bad_normalisation_are_rejected():
    with pytest.raises(ConfigError, match="valid choices: mnist, fashion_mnist, cifar10"):
        prepare.prepare("imagenet", prepare.default_data_dir())
    dataset_cfg = OmegaConf.merge(
        compose_config("dataset=cifar10").dataset, {"normalize": {"mean": [0.5], "std": [0.5]}}
    )
    with pytest.raises(ConfigError, match="give 3 mean"):
        in_memory.check_dataset_config(dataset_cfg)


def test_data_dir_follows_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("OPTBENCH_DATA_DIR", str(tmp_path))
    assert prepare.default_data_dir() == tmp_path
    assert prepare.resolve_data_dir(None) == tmp_path
    assert prepare.resolve_data_dir("/somewhere/else") == Path("/somewhere/else")
