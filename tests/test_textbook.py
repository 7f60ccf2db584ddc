"""Optimizers written from their equations, step by step against torch.optim."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from optbench import models
from optbench.data.in_memory import load
from optbench.optimizers.build import build_optimizer

from conftest import compose_config

# (ours, torch.optim's, extra hyperparameters for both)
PAIRS = [
    ("textbook_sgd", "sgd", {"lr": 0.1}),
    ("textbook_momentum", "momentum", {"lr": 0.05}),
    ("textbook_nesterov", "nesterov", {"lr": 0.05}),
    ("textbook_adagrad", "adagrad", {"lr_decay": 0.01}),
    ("textbook_adadelta", "adadelta", {}),
    ("textbook_rmsprop", "rmsprop", {"lr": 0.001}),
    ("textbook_rmsprop", "rmsprop_momentum", {"lr": 0.0005, "momentum": 0.9}),
    ("textbook_rmsprop", "rmsprop_centered", {"lr": 0.001, "centered": True}),
    ("textbook_adam", "adam", {}),
    ("textbook_adam", "amsgrad", {"amsgrad": True}),
    ("textbook_adam", "adam", {"weight_decay": 0.01}),
    ("textbook_adamw", "adamw", {}),
    ("textbook_adamax", "adamax", {}),
]


def optimizer_cfg(name: str, extra: dict):
    overrides = [f"optimizer={name}", *(f"optimizer.{k}={v}" for k, v in extra.items())]
    return compose_config(*overrides).optimizer


def train_100_steps(name: str, extra: dict, tensors, dtype) -> tuple[list, list]:
    """Initial and final parameters after 100 steps on real MNIST mini-batches."""
    cfg = compose_config()
    model = models.build_model(cfg.model, cfg.dataset, seed=3).to(dtype)
    initial = [p.detach().clone() for p in model.parameters()]
    optimizer = build_optimizer(optimizer_cfg(name, extra), model.parameters())
    order = torch.Generator().manual_seed(0)
    for _ in range(100):
        index = torch.randint(len(tensors.train_x), (64,), generator=order)
        loss = F.cross_entropy(model(tensors.train_x[index].to(dtype)), tensors.train_y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return initial, [p.detach() for p in model.parameters()]


@pytest.fixture(scope="module")
def mnist(data_dir):
    return load(compose_config("dataset.train_size=5000").dataset, data_dir, torch.device("cpu"))


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize(("ours", "theirs", "extra"), PAIRS, ids=lambda v: str(v))
def test_textbook_optimizer_follows_torch_optim(mnist, ours, theirs, extra, dtype, tolerance):
    initial, mine = train_100_steps(ours, extra, mnist, dtype)
    _, reference = train_100_steps(theirs, extra, mnist, dtype)
    for start, a, b in zip(initial, mine, reference, strict=True):
        assert not torch.equal(start, b)  # it trained
        relative = (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()
        assert relative < tolerance, (ours, theirs, relative)


def test_the_fourth_tutorials_two_bugs_are_not_repeated():
    """Adam's bias correction uses beta**t; RMSProp with momentum keeps its average."""
    p = torch.zeros(1, requires_grad=True)
    adam = build_optimizer(optimizer_cfg("textbook_adam", {"lr": 1.0}), [p])
    p.grad = torch.tensor([2.0])
    adam.step()
    # First step: m̂ = g, v̂ = g², so the step is lr * g / (|g| + eps) = 1, whatever beta.
    assert p.item() == pytest.approx(-1.0, abs=1e-6)
    q = torch.zeros(1, requires_grad=True)
    rms = build_optimizer(optimizer_cfg("textbook_rmsprop", {"momentum": 0.9}), [q])
    for g in (1.0, 3.0):
        q.grad = torch.tensor([g])
        rms.step()
    # v after two steps: 0.99 * (0.01 * 1) + 0.01 * 9, not 0.01 * 9 alone
    assert rms.state[q]["square_avg"].item() == pytest.approx(0.99 * 0.01 + 0.01 * 9)
