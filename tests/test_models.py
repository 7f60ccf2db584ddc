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


def _ffnns(count: int, input_shape=(1, 28, 28), hidden: int = 100) -> list[models.FFNN]:
    torch.manual_seed(0)
    return [models.FFNN(input_shape, 10, hidden) for _ in range(count)]


def _sparse_images(*shape: int) -> torch.Tensor:
    """Like MNIST: about 20% of the pixels non-zero, in [0, 1]."""
    return torch.rand(*shape) * (torch.rand(*shape) > 0.8)


@pytest.mark.parametrize("shared", [False, True], ids=["a batch per run", "one batch for all"])
@pytest.mark.parametrize("hidden", [100, 128])
def test_stacked_ffnn_gives_each_run_its_autograd_loss_and_gradient(shared, hidden):
    """Independent reference: each FFNN on its own, F.cross_entropy and autograd."""
    nets = _ffnns(6, hidden=hidden)
    stacked = models.stacked(nets)
    groups = 1 if shared else 6
    x, y = _sparse_images(groups, 32, 1, 28, 28), torch.randint(0, 10, (groups, 32))
    losses, grads = stacked.losses_and_grads(x, y)
    logits = stacked.logits(x)
    for r, net in enumerate(nets):
        g = 0 if shared else r
        loss = torch.nn.functional.cross_entropy(net(x[g]), y[g])
        expected = torch.autograd.grad(loss, list(net.parameters()))
        torch.testing.assert_close(losses[r], loss.detach(), rtol=1e-6, atol=0)
        torch.testing.assert_close(logits[r], net(x[g]).detach(), rtol=1e-5, atol=1e-6)
        for grad, reference in zip(grads, expected, strict=True):
            torch.testing.assert_close(grad[r], reference, rtol=1e-5, atol=1e-7)


def test_stacked_ffnn_gives_a_run_the_same_numbers_in_any_stack():
    """Bit for bit: runs of a stack of 50 against the same runs alone or 5 together."""
    nets = _ffnns(50)
    stacked = models.stacked(nets)
    x, y = _sparse_images(50, 100, 1, 28, 28), torch.randint(0, 10, (50, 100))
    all_losses, all_grads = stacked.losses_and_grads(x, y)
    all_logits = stacked.logits(x[:1])  # the test set's way: one batch for all runs
    for part in (slice(0, 1), slice(7, 8), slice(49, 50), slice(5, 10), slice(45, 50)):
        some = models.stacked(nets[part])
        losses, grads = some.losses_and_grads(x[part], y[part])
        assert torch.equal(losses, all_losses[part])
        assert all(torch.equal(g, a[part]) for g, a in zip(grads, all_grads, strict=True))
        assert torch.equal(some.logits(x[:1]), all_logits[part])


def test_vmapped_models_give_each_run_its_autograd_gradient():
    """The path for models without a written-out backward (the LeNet)."""
    torch.manual_seed(0)
    nets = [models.LeNet((1, 28, 28), 10) for _ in range(3)]
    stacked = models.stacked(nets)
    assert isinstance(stacked, models.VmappedModel)
    x, y = torch.rand(3, 8, 1, 28, 28), torch.randint(0, 10, (3, 8))
    losses, grads = stacked.losses_and_grads(x, y)
    for r, net in enumerate(nets):
        loss = torch.nn.functional.cross_entropy(net(x[r]), y[r])
        expected = torch.autograd.grad(loss, list(net.parameters()))
        torch.testing.assert_close(losses[r], loss.detach())
        for grad, reference in zip(grads, expected, strict=True):
            torch.testing.assert_close(grad[r], reference)
