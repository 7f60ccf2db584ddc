"""A dataset of your own (docs/custom_workloads.md), read into tensors as the built-ins are.

Three sources, one of `dataset._target_` or `dataset.folder`:

- a torchvision-style dataset class: each split is `cls(root=data_dir, train=True/False,
  download=False, **args, **train_args / **test_args)`, `root`, `train` and `download`
  passed where its signature names them. A class without `train` (torchvision's FakeData)
  makes its two splits from `train_args` and `test_args` (FakeData: two random_offset).
  Its items are (image, label): a PIL image, or a tensor [C, H, W] or [H, W].
- a function returning the tensors, `fn(**args)` (with root=data_dir where it takes `root`):
  (train_x, train_y, test_x, test_y), or a mapping of those four names; images [N, C, H, W]
  or [N, H, W], uint8 (scaled to [0, 1] as ToTensor does) or float (taken as they are).
- an ImageFolder-style folder holding train/ and test/, each with one folder of images per
  class (the same class folders in both; classes in sorted order, as ImageFolder numbers them).

What the config leaves null is read from the data: input_shape from the images,
num_classes from the labels (the largest + 1); normalize: auto is each channel's mean and
std over the training images. `check` fills these in, with the split sizes (`examples`),
the SHA-256 of the class's or function's file (`source_sha256`) and of the tensors
themselves (`data_sha256`): all part of the protocol, so results of other data are never
mixed with these. Label and shape problems are refused before training.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf, open_dict

from optbench.config.schema import import_target
from optbench.errors import ConfigError
from optbench.files import source_sha256

if TYPE_CHECKING:
    import torch

SOURCES = ("_target_", "folder")
# filled in by check(): part of the protocol
FILLED = ("input_shape", "num_classes", "examples", "source_sha256", "data_sha256")

Tensors = tuple  # (train_x, train_y, test_x, test_y), torch tensors
_READ: dict[str, Tensors] = {}  # by the source's canonical JSON: read once per process
_DIGESTS: dict[str, str] = {}  # the SHA-256 of those tensors, by the same key
# torch is imported where the data is read, not with this module: the command line starts
# without it (tests/test_layers.py)


def is_custom(dataset: Mapping) -> bool:
    """Whether the dataset is a user's own (dataset._target_ or dataset.folder)."""
    return any(key in dataset for key in SOURCES)


def train_examples(dataset: Mapping) -> int:
    return int(dataset["examples"]["train"])


def _plain(dataset: Mapping) -> dict:
    if isinstance(dataset, DictConfig):
        return OmegaConf.to_container(dataset, resolve=True)
    return dict(dataset)


def _source(dataset: dict) -> dict:
    """What decides the tensors: the source and its arguments (not the sizes kept, not
    normalisation), as one canonical mapping."""
    keys = ("_target_", "folder", "args", "train_args", "test_args")
    return {key: dataset.get(key) for key in keys}


def read(dataset: Mapping, data_dir: Path) -> Tensors:
    """The dataset's two splits as tensors: images [N, C, H, W] (uint8 or float32) and
    labels [N] int64, read once per process."""
    dataset = _plain(dataset)
    key = _key(dataset, data_dir)
    if key not in _READ:
        if dataset.get("folder") is not None:
            tensors = _from_folder(Path(str(dataset["folder"])).expanduser())
        else:
            tensors = _from_target(dataset, Path(data_dir))
        _READ[key] = tensors
    return _READ[key]


def _key(dataset: dict, data_dir: Path) -> str:
    return json.dumps([_source(dataset), str(Path(data_dir).resolve())], sort_keys=True)


def target_of(dataset: Mapping):
    target = str(dataset["_target_"])
    found = import_target(
        target,
        f"Dataset {dataset.get('name')!r}",
        "dataset._target_",
        "a torchvision-style dataset class or a function returning tensors, e.g. "
        "torchvision.datasets.FakeData or my_package.load_my_data, importable from "
        "PYTHONPATH.",
    )
    if not callable(found):
        raise ConfigError(
            f"Dataset {dataset.get('name')!r}: dataset._target_={target!r} is neither a class "
            "nor a function."
        )
    return found


def _from_target(dataset: dict, data_dir: Path) -> Tensors:
    """The tensors of a dataset class's two splits, or of a function's return."""
    target = target_of(dataset)
    what = f"dataset._target_={dataset['_target_']}"
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        parameters = {}
    args = dict(dataset.get("args") or {})
    if "root" in parameters and "root" not in args:
        args["root"] = str(data_dir)
    if inspect.isclass(target):
        return _from_class(dataset, target, parameters, args, what)
    return _from_function(target, args, what)


def _from_function(function, args: dict, what: str) -> Tensors:
    """`function(**args)`: (train_x, train_y, test_x, test_y), or a mapping of those names."""
    import torch

    names = ("train_x", "train_y", "test_x", "test_y")
    returned = _called(what, lambda: function(**args))
    if isinstance(returned, Mapping):
        if not all(name in returned for name in names):
            raise ConfigError(
                f"{what} returned a mapping with keys {sorted(returned)}; return "
                "train_x, train_y, test_x and test_y."
            )
        returned = tuple(returned[name] for name in names)
    if not isinstance(returned, (tuple, list)) or len(returned) != 4:
        raise ConfigError(
            f"{what} returned a {type(returned).__name__}; a dataset function returns "
            "(train_x, train_y, test_x, test_y): images [N, C, H, W] and labels [N]."
        )
    train_x, train_y, test_x, test_y = (torch.as_tensor(t) for t in returned)
    return (
        *_checked_split(what, "train", train_x, train_y),
        *_checked_split(what, "test", test_x, test_y),
    )


def _from_class(dataset: dict, cls: type, parameters, args: dict, what: str) -> Tensors:
    """Each split `cls(**args, train=True/False, **train_args / **test_args)`, downloading
    nothing unless args say so; a class without `train` needs split arguments that differ."""
    if "download" in parameters and "download" not in args:
        args["download"] = False
    split_args = {split: dict(dataset.get(f"{split}_args") or {}) for split in ("train", "test")}
    if "train" in parameters:
        split_args["train"].setdefault("train", True)
        split_args["test"].setdefault("train", False)
    elif split_args["train"] == split_args["test"]:  # none given, or the same for both
        raise ConfigError(
            f"{what} takes no `train` argument, and dataset.train_args and dataset.test_args "
            "do not tell its two splits apart: give each split its own arguments, e.g. for "
            "FakeData +dataset.train_args.random_offset=0 "
            "+dataset.test_args.random_offset=1000000 (docs/custom_workloads.md)."
        )
    splits = []
    for split in ("train", "test"):
        made = _called(what, lambda split=split: cls(**args, **split_args[split]))
        splits += _items_as_tensors(what, split, made)
    return tuple(splits)


def _called(what: str, call):
    try:
        return call()
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(
            f"{what} failed ({type(error).__name__}: {' '.join(str(error).split())}); set its "
            "arguments with +dataset.args.KEY=VALUE (docs/custom_workloads.md)."
        ) from None


def _from_folder(folder: Path) -> Tensors:
    """An ImageFolder-style pair: folder/train/<class>/*.png and folder/test/<class>/*.png."""
    import torchvision

    what = f"dataset.folder={folder}"
    missing = [split for split in ("train", "test") if not (folder / split).is_dir()]
    if missing:
        raise ConfigError(
            f"{what} holds no {' and no '.join(f'{m}/' for m in missing)} folder; a dataset "
            "folder holds train/ and test/, each with one folder of images per class."
        )
    splits, classes = [], {}
    for split in ("train", "test"):
        try:
            images = torchvision.datasets.ImageFolder(str(folder / split))
        except (FileNotFoundError, OSError) as error:
            raise ConfigError(f"{what}: {split}/ cannot be read ({error}).") from None
        classes[split] = images.classes
        splits += _items_as_tensors(what, split, images)
    unknown = sorted(set(classes["test"]) - set(classes["train"]))
    if classes["test"] != classes["train"]:
        raise ConfigError(
            f"{what}: test/ and train/ hold different class folders (train/ has "
            f"{classes['train']}, test/ has {classes['test']}"
            + (f"; {unknown} only in test/" if unknown else "")
            + "); give both the same class folders."
        )
    return tuple(splits)


def _items_as_tensors(what: str, split: str, items) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset object's (image, label) items as images [N, C, H, W] and labels [N]."""
    import torch
    from torchvision.transforms.functional import pil_to_tensor

    images, labels = [], []
    try:
        for index in range(len(items)):
            image, label = items[index]
            if not isinstance(image, torch.Tensor):
                image = pil_to_tensor(image)
            images.append(image if image.ndim == 3 else image.unsqueeze(0))
            labels.append(int(label))
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(
            f"{what}: the {split} split's items cannot be read as (image, label) "
            f"({type(error).__name__}: {' '.join(str(error).split())})."
        ) from None
    if not images:
        raise ConfigError(f"{what}: the {split} split holds no examples.")
    shapes = sorted({tuple(image.shape) for image in images})
    if len(shapes) > 1:
        raise ConfigError(
            f"{what}: the {split} split's images have different shapes ({shapes[:3]}); "
            "give images of one size."
        )
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def _checked_split(what: str, split: str, x: torch.Tensor, y: torch.Tensor):
    import torch

    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or not (x.dtype == torch.uint8 or x.is_floating_point()):
        raise ConfigError(
            f"{what}: the {split} images are {x.dtype} of shape {list(x.shape)}; give "
            "images [N, C, H, W] (or [N, H, W]), uint8 or float."
        )
    if y.ndim != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise ConfigError(
            f"{what}: the {split} labels are {y.dtype} of shape {list(y.shape)}; give labels "
            "[N] of whole numbers (class indices)."
        )
    return x if x.dtype == torch.uint8 else x.float(), y.long()


def check(dataset: DictConfig, data_dir: Path) -> None:
    """Read the dataset, refuse label and shape problems, and fill in what the config leaves
    null (input_shape, num_classes, normalize: auto) with the split sizes and hashes."""
    import torch

    given = [key for key in SOURCES if dataset.get(key) not in (None, "???")]
    name = dataset.get("name")
    if len(given) != 1:
        raise ConfigError(
            f"Dataset {name!r} needs exactly one of dataset._target_=... (a torchvision-style "
            "class or a function returning tensors) and dataset.folder=DIR (train/ and "
            f"test/ of class folders){'; both are given' if given else ''} "
            "(docs/custom_workloads.md)."
        )
    plain = _plain(dataset)
    train_x, train_y, test_x, test_y = read(plain, data_dir)
    where = f"Dataset {name!r} (dataset.{given[0]}={plain[given[0]]})"
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if len(x) != len(y):
            raise ConfigError(
                f"{where}: its {split} split has {len(x)} images but {len(y)} labels; give "
                "one label per image."
            )
        if len(x) == 0:
            raise ConfigError(f"{where}: its {split} split holds no examples.")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ConfigError(
            f"{where}: its train images are {list(train_x.shape[1:])} and its test images "
            f"{list(test_x.shape[1:])}; give both splits images of one shape."
        )
    shape = list(train_x.shape[1:])
    if dataset.get("input_shape") is not None and list(dataset.input_shape) != shape:
        raise ConfigError(
            f"Invalid dataset.input_shape={list(dataset.input_shape)}: {where} has images "
            f"{shape}; give that, or null to read it from the data."
        )
    labels = torch.cat([train_y, test_y])
    classes = dataset.get("num_classes")
    if classes is None:
        classes = int(labels.max()) + 1
    elif isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ConfigError(
            f"Invalid dataset.num_classes={classes!r}: give a whole number of at least 2, or "
            "null to read it from the labels."
        )
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
        raise ConfigError(
            f"{where}: label {bad} is out of range for num_classes={classes} (labels are "
            f"class indices 0 to {classes - 1}); fix the labels, or give "
            "dataset.num_classes=N."
        )
    if len(train_y.unique()) < 2:
        raise ConfigError(
            f"{where}: its training labels hold one class only ({int(train_y[0])}); a "
            "classifier needs at least two."
        )
    with open_dict(dataset):
        dataset.input_shape = shape
        dataset.num_classes = classes
        dataset.examples = {"train": len(train_x), "test": len(test_x)}
        if dataset.get("_target_") is not None:
            dataset.source_sha256 = source_sha256(target_of(dataset))
        key = _key(plain, data_dir)
        if key not in _DIGESTS:
            _DIGESTS[key] = _tensors_sha256((train_x, train_y, test_x, test_y))
        dataset.data_sha256 = _DIGESTS[key]
        if dataset.get("normalize") == "auto":
            dataset.normalize = channel_statistics(train_x)


def _tensors_sha256(tensors) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(f"{tensor.dtype}{list(tensor.shape)}".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images scaled to [0, 1] as ToTensor scales them; float images as they are."""
    import torch

    return images.float().div(255) if images.dtype == torch.uint8 else images


def channel_statistics(images: torch.Tensor) -> dict:
    """Each channel's mean and std over the training images (scaled to [0, 1]), for
    normalize: auto."""
    values = as_float(images).double().transpose(0, 1).flatten(1)
    return {"mean": values.mean(dim=1).tolist(), "std": values.std(dim=1).tolist()}
