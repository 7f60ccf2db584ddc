"""Time how fast `optbench` rejects bad input (the target: one paragraph within 10 s).

Each case runs `optbench` in a subprocess from an empty folder, as a user would, and this
prints its exit code, wall time and the first 100 characters of its message. Timings belong
here rather than in the tests: this machine is shared and noisy.

    python scripts/time_bad_input.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = [
    ["run", "optimizer=adamm"],
    ["run", "model=resnet"],
    ["run", "dataset=imagenet"],
    ["run", "experiment=nope"],
    ["run", "seeds=0"],
    ["run", "seeds=-2"],
    ["run", "train.batch_size=0"],
    ["run", "optimizer.lr=-0.1"],
    ["sweep", "optimizers=[sgd,nope]"],
    ["run", "-m", "optimizer=sgd,adamm"],
    ["run", "optimizer=sparse_adam"],
]


def main() -> None:
    optbench = str(Path(sys.executable).with_name("optbench"))
    slowest = 0.0
    for case in CASES:
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            result = subprocess.run([optbench, *case], cwd=folder, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            written = list(Path(folder).iterdir())
        slowest = max(slowest, seconds)
        message = result.stderr.strip().replace("optbench: error: ", "")[:100]
        print(
            f"{seconds:5.1f} s  exit {result.returncode}  files written: {len(written)}  "
            f"{' '.join(case)}: {message}"
        )
    print(f"slowest: {slowest:.1f} s (target: 10 s)")


if __name__ == "__main__":
    main()
