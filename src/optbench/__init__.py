"""optbench: benchmark PyTorch optimizers over many seeds, honestly.

From Python (docs/python.md): optbench.run, sweep, tune and suite train as the commands of
the same names do and return a Results (runs, summary, ranking DataFrames and the folder);
optbench.load reads any results folder. Bad input raises optbench.ConfigError, a failing
resource optbench.ResourceError, each with the message the command prints. They are
imported on first use, so that `import optbench` (and the command's start) stays without
torch.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("optbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_API = ("run", "sweep", "tune", "suite", "load", "Results")
_ERRORS = ("ConfigError", "ResourceError", "ResultsError")

__all__ = ["__version__", *_API, *_ERRORS]


def __getattr__(name: str):
    if name in _API:
        from optbench import api

        value = getattr(api, name)
    elif name in _ERRORS:
        from optbench import errors

        value = getattr(errors, name)
    else:
        raise AttributeError(f"module 'optbench' has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
