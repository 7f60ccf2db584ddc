"""Datasets as tensors: the whole dataset on the run's device, scaled (and normalised) once.

Training never touches PIL or a DataLoader: `load` reads the files that
prepare.prepare made sure of, with torchvision's own classes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from optbench.data import custom
from optbench.data import prepare as preparation
from optbench.data.prepare import DATASETS, TEST_SIZE, TRAIN_SIZES, dataset_class, prepare
from optbench.errors import ConfigError


@dataclass
class DatasetTensors:
    """A whole dataset on one device: images [N, C, H, W] float32, labels [N] int64; the
    validation set (held out of the training set) is None unless dataset.validation_size."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    validation_x: torch.Tensor | None = None
    validation_y: torch.Tensor | None = None

    def validation(self) -> DatasetTensors:
        """The same data with the validation set in the test set's place: what a trainer's
        test pass evaluates to give the validation metrics."""
        return DatasetTensors(self.train_x, self.train_y, self.validation_x, self.validation_y)


VALIDATION_SEED = 20_240_601  # the held-out examples are the same for every run and machine


def validation_split(labels: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation indices, training indices) of a training set: `size` examples held out,
    stratified (each class in proportion to its share of the set, the rounding going to the
    classes with the largest remainders), chosen at random within each class by a fixed
    seed. Both index sets are sorted, so the training examples keep their order."""
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * size / len(labels)
    quota = exact.floor().long()
    remainders = exact - quota
    quota[torch.argsort(remainders, descending=True, stable=True)[: size - int(quota.sum())]] += 1
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    chosen = []
    for label, take in zip(classes.tolist(), quota.tolist(), strict=True):
        members = torch.nonzero(labels == label).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:take]])
    validation = torch.sort(torch.cat(chosen)).values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[validation] = False
    return validation, torch.nonzero(keep).flatten()


def check_dataset_config(dataset: Mapping, data_dir: Path | None = None) -> None:
    """A built-in dataset's config; a dataset of your own is read from data_dir first
    (custom.check fills in its input_shape, num_classes and sizes)."""
    if custom.is_custom(dataset) and dataset["name"] in DATASETS:
        raise ConfigError(
            f"dataset.name={dataset['name']!r} is a built-in dataset's name; give your "
            "dataset a name of its own, e.g. dataset.name=my_data."
        )
    if dataset["normalize"] == "auto" and not custom.is_custom(dataset):
        raise ConfigError(
            f"dataset.normalize=auto reads the statistics of a dataset of your own; for "
            f"{dataset['name']} give {{mean: [..], std: [..]}} per channel, or null."
        )
    if custom.is_custom(dataset):
        custom.check(dataset, preparation.resolve_data_dir(None) if data_dir is None else data_dir)
        full_train, full_test = dataset["examples"]["train"], dataset["examples"]["test"]
    elif dataset["name"] not in DATASETS:
        raise ConfigError(
            f"Unknown dataset name {dataset['name']!r}; valid choices: {', '.join(DATASETS)}, "
            "or dataset=custom with dataset._target_=... or dataset.folder=DIR "
            "(docs/custom_workloads.md)."
        )
    else:
        full_train, full_test = TRAIN_SIZES[dataset["name"]], TEST_SIZE
    held_out = dataset.get("validation_size")
    if held_out is not None and (
        isinstance(held_out, bool)
        or not isinstance(held_out, int)
        or not 0 <= held_out < full_train
    ):
        raise ConfigError(
            f"Invalid dataset.validation_size={held_out!r} for {dataset['name']}: give a whole "
            f"number of training examples to hold out, from 0 to {full_train - 1}, or null "
            "for none."
        )
    _check_size(dataset, "train_size", full_train - (held_out or 0), "training")
    if held_out:
        _check_size(dataset, "validation_eval_size", held_out, "validation")
    _check_size(dataset, "test_size", full_test, "test")
    if dataset["normalize"] is not None:
        channels = dataset["input_shape"][0]
        mean, std = list(dataset["normalize"]["mean"]), list(dataset["normalize"]["std"])
        if len(mean) != channels or len(std) != channels or any(s <= 0 for s in std):
            raise ConfigError(
                f"Invalid dataset.normalize={dict(mean=mean, std=std)} for {dataset['name']}: "
                f"give {channels} mean(s) and {channels} positive std(s), or null."
            )


def _check_size(dataset: Mapping, key: str, full: int, split: str) -> None:
    """dataset.train_size or dataset.test_size: null (all), or 1 to the split's size (for
    training, what the validation set leaves)."""
    size = dataset.get(key)
    if size is not None and (
        isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= full
    ):
        left = {
            "train_size": " left after dataset.validation_size",
            "validation_eval_size": " held out by dataset.validation_size, evaluated",
        }.get(key, "")
        raise ConfigError(
            f"Invalid dataset.{key}={size!r} for {dataset['name']}: give a whole number "
            f"from 1 to {full} (the first N {split} examples{left}), or null for all {full}."
        )


def _images_as_float(images) -> torch.Tensor:
    """uint8 images ([N, H, W] or [N, H, W, C]) -> float32 [N, C, H, W] in [0, 1], as ToTensor."""
    images = torch.as_tensor(images)
    if images.ndim == 3:
        images = images.unsqueeze(1)
    else:
        images = images.permute(0, 3, 1, 2)
    return images.contiguous().float().div(255)


@functools.lru_cache(maxsize=4)
def _read(name: str, data_dir: Path) -> tuple[torch.Tensor, ...]:
    """The dataset's images (uint8, as stored) and labels, read with torchvision's class.
    Kept for the process, so that the jobs of a multirun or a suite (and a test session)
    read each dataset once: uint8 keeps that small (MNIST 55 MB, CIFAR-10 184 MB), and
    nothing writes into these tensors."""
    cls = dataset_class(name)
    train = cls(str(data_dir), train=True, download=False)
    test = cls(str(data_dir), train=False, download=False)
    labels = [torch.as_tensor(split.targets, dtype=torch.int64) for split in (train, test)]
    return torch.as_tensor(train.data), labels[0], torch.as_tensor(test.data), labels[1]


def load(dataset: Mapping, data_dir: Path, device: torch.device) -> DatasetTensors:
    """The dataset as tensors on `device`: images float32 in [0, 1] (normalised where the
    config says): validation_size training examples held out (validation_split), of which
    the first validation_eval_size are evaluated, the first train_size of the rest, and the
    first test_size test examples."""
    if custom.is_custom(dataset):
        return _load_custom(dataset, data_dir, device)
    prepare(dataset["name"], data_dir)
    train_x, train_y, test_x, test_y = _read(dataset["name"], Path(data_dir).resolve())
    validation_x = validation_y = None
    if dataset.get("validation_size"):  # held out first: train_size counts what is left
        held_out, kept = validation_split(train_y, dataset["validation_size"])
        validation_x, validation_y = _images_as_float(train_x[held_out]), train_y[held_out]
        train_x, train_y = train_x[kept], train_y[kept]
        if dataset.get("validation_eval_size") is not None:  # the first N evaluated (smoke)
            cut = dataset["validation_eval_size"]
            validation_x, validation_y = validation_x[:cut], validation_y[:cut]
    if dataset["train_size"] is not None:  # the first N training examples, the same for every run
        train_x, train_y = train_x[: dataset["train_size"]], train_y[: dataset["train_size"]]
    if dataset.get("test_size") is not None:  # the first N test examples, for a quick look
        test_x, test_y = test_x[: dataset["test_size"]], test_y[: dataset["test_size"]]
    # scaled after the cut: element by element, so the same values as scaling them all first
    train_x, test_x = _images_as_float(train_x), _images_as_float(test_x)
    if dataset["normalize"] is not None:  # as torchvision's Normalize: (x - mean) / std per channel
        mean = torch.tensor(list(dataset["normalize"]["mean"])).view(1, -1, 1, 1)
        std = torch.tensor(list(dataset["normalize"]["std"])).view(1, -1, 1, 1)
        train_x, test_x = train_x.sub(mean).div(std), test_x.sub(mean).div(std)
        if validation_x is not None:
            validation_x = validation_x.sub(mean).div(std)
    expected = tuple(dataset["input_shape"])
    if tuple(train_x.shape[1:]) != expected:
        raise ConfigError(
            f"dataset.input_shape={list(expected)} does not match {dataset['name']}'s images "
            f"{list(train_x.shape[1:])}."
        )
    moved = [t if t is None else t.to(device) for t in (validation_x, validation_y)]
    return DatasetTensors(
        train_x.to(device), train_y.to(device), test_x.to(device), test_y.to(device), *moved
    )


def _load_custom(dataset: Mapping, data_dir: Path, device: torch.device) -> DatasetTensors:
    """A dataset of your own as tensors on `device`, cut, scaled and normalised as a built-in
    one is (custom.read has read it once for the process)."""
    train_x, train_y, test_x, test_y = custom.read(dataset, data_dir)
    validation_x = validation_y = None
    if dataset.get("validation_size"):  # held out first, as of a built-in dataset
        held_out, kept = validation_split(train_y, dataset["validation_size"])
        validation_x, validation_y = custom.as_float(train_x[held_out]), train_y[held_out]
        train_x, train_y = train_x[kept], train_y[kept]
        if dataset.get("validation_eval_size") is not None:  # the first N evaluated (smoke)
            cut = dataset["validation_eval_size"]
            validation_x, validation_y = validation_x[:cut], validation_y[:cut]
    if dataset["train_size"] is not None:
        train_x, train_y = train_x[: dataset["train_size"]], train_y[: dataset["train_size"]]
    if dataset.get("test_size") is not None:
        test_x, test_y = test_x[: dataset["test_size"]], test_y[: dataset["test_size"]]
    train_x, test_x = custom.as_float(train_x), custom.as_float(test_x)
    if dataset["normalize"] is not None:
        mean = torch.tensor(list(dataset["normalize"]["mean"])).view(1, -1, 1, 1)
        std = torch.tensor(list(dataset["normalize"]["std"])).view(1, -1, 1, 1)
        train_x, test_x = train_x.sub(mean).div(std), test_x.sub(mean).div(std)
        if validation_x is not None:
            validation_x = validation_x.sub(mean).div(std)
    moved = [t if t is None else t.to(device) for t in (validation_x, validation_y)]
    return DatasetTensors(
        train_x.to(device), train_y.to(device), test_x.to(device), test_y.to(device), *moved
    )
