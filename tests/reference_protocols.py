"""The three tutorials' protocols, transcribed from the tutorials themselves (docs/protocols.md
says where each value comes from). An independent table: the tests check every preset in
configs/ against it, so a preset edited by mistake fails, whatever the preset file says.

Optimizer hyperparameters list only what differs from torch.optim's defaults.
"""

from __future__ import annotations

PROTOCOLS = {
    "wizard_ffnn": {
        "dataset": "mnist",
        "normalize": None,  # ToTensor only: pixels in [0, 1]
        "train_size": 60_000,
        "model": ("ffnn", {"hidden": 100}),
        "batch_size": 100,
        "total_steps": 3000,  # 5 epochs of 600 steps
        "eval_steps": [500, 1000, 1500, 2000, 2500, 3000],
        "test_batch_size": 10_000,  # the whole test set at once
        "optimizers": {
            "sgd": ("torch.optim.SGD", {"lr": 0.1}),
            "momentum": ("torch.optim.SGD", {"lr": 0.1, "momentum": 0.9}),
            "nesterov": ("torch.optim.SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
            "adam": ("torch.optim.Adam", {}),
            "adagrad": ("torch.optim.Adagrad", {}),
            "adadelta": ("torch.optim.Adadelta", {}),
            "adamax": ("torch.optim.Adamax", {}),
            "rmsprop": ("torch.optim.RMSprop", {}),
        },
    },
    "examples_cnn": {
        "dataset": "mnist",
        "normalize": ([0.1307], [0.3081]),
        "train_size": 60_000,
        "model": ("lenet", {"conv1_channels": 20, "conv2_channels": 50, "hidden": 500}),
        "batch_size": 64,
        "total_steps": 10 * 938,  # 10 epochs
        "eval_steps": [938 * epoch for epoch in range(1, 11)],  # after every epoch
        "test_batch_size": 1000,
        # rprop diverged in the tutorial, sparse_adam failed, lbfgs was skipped: not listed
        "optimizers": {
            "sgd": ("torch.optim.SGD", {"lr": 0.01, "momentum": 0.5}),
            "adagrad": ("torch.optim.Adagrad", {}),
            "adadelta": ("torch.optim.Adadelta", {}),  # lr 1.0, torch's default
            "rmsprop": ("torch.optim.RMSprop", {}),
            "adam": ("torch.optim.Adam", {}),
            "amsgrad": ("torch.optim.Adam", {"amsgrad": True}),
            "adamw": ("torch.optim.AdamW", {}),
            "adamax": ("torch.optim.Adamax", {}),
            "asgd": ("torch.optim.ASGD", {}),
        },
    },
    "simple_nn": {
        "dataset": "mnist",
        "normalize": ([0.5], [0.5]),
        "train_size": 60_000,
        "model": ("ffnn", {"hidden": 128}),
        "batch_size": 64,
        "total_steps": 5 * 938,  # 5 epochs
        "eval_steps": [938 * epoch for epoch in range(1, 6)],
        "test_batch_size": 64,
        "optimizers": {
            "sgd": ("torch.optim.SGD", {"lr": 0.01}),
            "adam": ("torch.optim.Adam", {"lr": 0.001}),
            "rmsprop": ("torch.optim.RMSprop", {"lr": 0.001}),
        },
    },
}

# SHA-256 of the published tables shipped in src/optbench/analysis/published/, as copied
# from the tutorials (one seed each; see docs/protocols.md).
PUBLISHED_SHA256 = {
    "wizard_ffnn": "a4a0616a91d57c741ac4e82c17fd7edaae4eaafa05cfd71deaebbded0c8fb4ca",
    "examples_cnn": "4847c3750654cd69fd2116b1100dbe8ee051a68ca716b26e331e4115f4396323",
}
