"""The two model families, checked against hand-counted shapes and parameter counts."""

from __future__ import annotations

import pytest
import torch

from optbench import models

from conftest import compose_config


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        # 784*100 + 100 + 100*10 + 10
        ("mnist", 79_510),
        # 3072*100 + 100 + 100*10 + 10
        ("cifar10", 308_310),
    ],
)
def test_ffnn_follows_the_dataset(dataset, expected):
    cfg = compose_config(f"dataset={dataset}", "model=ffnn")
    model = models.build_model(cfg.model, cfg.dataset, seed=0)
    assert n_params(model) == expected
    x = torch.zeros(7, *cfg.dataset.input_shape)
    assert model(x).shape == (7, 10)


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        # conv1 20*1*25+20, conv2 50*20*25+50, fc1 800*500+500, fc2 500*10+10
        ("mnist", 520 + 25_050 + 400_500 + 5_010),
        # conv1 20*3*25+20, conv2 50*20*25+50, fc1 1250*500+500, fc2 500*10+10
        ("cifar10", 1_520 + 25_050 + 625_500 + 5_010),
    ],
)
def test_lenet_is_the_2019_example_sized_for_the_dataset(dataset, expected):
    cfg = compose_config(f"dataset={dataset}", "model=lenet")
    model = models.build_model(cfg.model, cfg.dataset, seed=0)
    assert n_params(model) == expected
    x = torch.zeros(5, *cfg.dataset.input_shape)
    assert model(x).shape == (5, 10)


def test_initial_weights_depend_on_the_seed_alone():
    cfg = compose_config("model=lenet")
    torch.manual_seed(123)  # the global RNG must not matter
    a = models.build_model(cfg.model, cfg.dataset, seed=4)
    torch.rand(1000)
    b = models.build_model(cfg.model, cfg.dataset, seed=4)
    c = models.build_model(cfg.model, cfg.dataset, seed=5)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb)
        assert not torch.equal(pa, pc)
    state = torch.random.get_rng_state()
    models.build_model(cfg.model, cfg.dataset, seed=4)
    assert torch.equal(state, torch.random.get_rng_state())  # nor is it disturbed


def test_hidden_width_is_configurable():
    cfg = compose_config("experiment=simple_nn")
    model = models.build_model(cfg.model, cfg.dataset, seed=0)
    assert model.fc1.out_features == 128
