"""optbench: benchmark PyTorch optimizers over many seeds, honestly."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("optbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
