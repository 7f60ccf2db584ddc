"""Tables that several test modules share."""

from __future__ import annotations

from pathlib import Path

# configs/debug/smoke.yaml: the first 1,000 training and 500 test examples, 20 steps, evaluated
# at 10 and 20
SMOKE = "debug=smoke"

# The fingerprint of the wizard_ffnn protocol, as its results committed in
# results/wizard_ffnn/runs.csv record it: the protocol from before optbench had schedules
WIZARD_FFNN_FINGERPRINT = "44b94764d2c6"

# What an optimizer config needs beyond the default model to build and train.
NEEDS = {
    "sparse_adam": ["model.sparse_input=true"],
    "custom": ["optimizer._target_=torch.optim.SGD"],
}
# What the `custom` file of the model and dataset groups needs to compose and train: a
# class that takes the dataset's shape (optbench's own ffnn, named as a user's would be), and
# torchvision's FakeData shaped like MNIST, its two splits told apart by random_offset.
CUSTOM_NEEDS = {
    "model": ["model._target_=optbench.models.FFNN"],
    "dataset": [
        "dataset._target_=torchvision.datasets.FakeData",
        "+dataset.args.size=200",
        "+dataset.args.image_size=[1,28,28]",
        "+dataset.train_args.random_offset=0",
        "+dataset.test_args.random_offset=1000000",
        "dataset.num_classes=10",
    ],
}
LINE_SEARCH = "optimizer.line_search_fn=strong_wolfe"  # L-BFGS on mini-batches needs one

# The plots every results folder of one protocol gets, and the first bytes of a real PNG.
PLOTS = [
    "test_accuracy.png",
    "test_loss.png",
    "train_loss.png",
    "last_batch_loss.png",
    "final_test_accuracy.png",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_plots(folder: Path) -> None:
    """Every plot is in folder, a real PNG with something drawn."""
    for name in PLOTS:
        payload = (folder / name).read_bytes()
        assert payload.startswith(PNG_MAGIC) and len(payload) > 10_000, name
