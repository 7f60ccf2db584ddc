"""The two model families. Both return logits; the loss is cross-entropy on them, which is
exactly log_softmax followed by NLL (what the 2019 PyTorch example computes)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from optbench.config import ConfigError


class FFNN(nn.Module):
    """flatten -> Linear(in, hidden) -> ReLU -> Linear(hidden, classes)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 100):
        super().__init__()
        self.fc1 = nn.Linear(math.prod(input_shape), hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class LeNet(nn.Module):
    """The 2019 PyTorch MNIST example's CNN, sized for any C x H x W input.

    Each 5x5 convolution (no padding) takes 4 pixels off a side and each pooling halves it:
    28 -> 24 -> 12 -> 8 -> 4 for MNIST (flat 800), 32 -> 28 -> 14 -> 10 -> 5 for CIFAR-10
    (flat 1250).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        conv1_channels: int = 20,
        conv2_channels: int = 50,
        hidden: int = 500,
    ):
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, conv1_channels, 5, 1)
        self.conv2 = nn.Conv2d(conv1_channels, conv2_channels, 5, 1)
        side_h, side_w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        flat = conv2_channels * side_h * side_w
        self.fc1 = nn.Linear(flat, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


MODELS = {"ffnn": FFNN, "lenet": LeNet}


def model_kwargs(model: DictConfig) -> dict:
    return {key: value for key, value in model.items() if key != "name"}


def check_model_config(model: DictConfig) -> None:
    if model.name not in MODELS:
        raise ConfigError(f"Unknown model name {model.name!r}; valid choices: {', '.join(MODELS)}.")
    for key, value in model_kwargs(model).items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"Invalid model.{key}={value!r}: it must be a positive integer.")


def build_model(model: DictConfig, dataset: DictConfig, seed: int) -> nn.Module:
    """The model's initial weights depend on `seed` alone, never on the global RNG state.

    Weights are drawn on the CPU, so a seed gives the same initial model on every device.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[model.name](
            tuple(dataset.input_shape), dataset.num_classes, **model_kwargs(model)
        )
