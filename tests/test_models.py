"""The two model families, checked against hand-counted shapes and parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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


def example_forward(model: models.LeNet, x: torch.Tensor) -> torch.Tensor:
    """The 2019 PyTorch MNIST example's forward, in its own order: ReLU, then pool."""
    x = F.max_pool2d(F.relu(model.conv1(x)), 2, 2)
    x = F.max_pool2d(F.relu(model.conv2(x)), 2, 2)
    return model.fc2(F.relu(model.fc1(x.flatten(1))))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_lenet_gives_the_examples_logits_and_gradients_bit_for_bit(layout):
    """LeNet pools before its ReLU; the example pools after. Both orders must give equal
    logits and gradients (torch.equal: 0.0 equals -0.0), also where whole windows are
    negative or exactly zero."""
    model = models.LeNet((1, 28, 28), 10).to(memory_format=layout)
    with torch.no_grad():  # many windows entirely <= 0 after each convolution
        model.conv1.bias.sub_(0.3)
        model.conv2.bias.sub_(0.1)
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x[:, :, :8] = 0.0  # rows of exact zeros
    y = torch.arange(16) % 10
    results = []
    for forward in (model.forward, lambda x: example_forward(model, x)):
        model.zero_grad(set_to_none=True)
        logits = forward(x)
        F.cross_entropy(logits, y).backward()
        results.append([logits.detach(), *(p.grad for p in model.parameters())])
    ours, example = results
    assert all(torch.equal(a, b) for a, b in zip(ours, example, strict=True))


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


@pytest.mark.parametrize(("hidden", "batch"), [(100, 100), (128, 64), (7, 1)])
def test_the_written_out_ffnn_gives_autograds_loss_and_gradients(hidden, batch):
    """Independent reference: the same FFNN through F.cross_entropy and autograd."""
    torch.manual_seed(0)
    net = models.FFNN((1, 28, 28), 10, hidden)
    x = torch.rand(batch, 1, 28, 28) * (torch.rand(batch, 1, 28, 28) > 0.8)  # MNIST-like
    y = torch.randint(0, 10, (batch,))
    loss = torch.nn.functional.cross_entropy(net(x), y)
    expected = torch.autograd.grad(loss, list(net.parameters()))
    written = models.ffnn_loss_and_grads(net, x, y)
    torch.testing.assert_close(written, loss.detach(), rtol=1e-6, atol=0)
    for p, reference in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, reference, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("model", ["ffnn", "lenet"])
def test_vmapped_models_give_each_run_its_autograd_gradient(model):
    """The stacked path a GPU takes, against each model on its own with autograd."""
    torch.manual_seed(0)
    nets = [models.MODELS[model]((1, 28, 28), 10) for _ in range(3)]
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
