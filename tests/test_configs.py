"""Every config group composes, every optimizer builds, and the schema rejects typos."""

from __future__ import annotations

import inspect
from importlib.resources import files

import pytest
from constants import CUSTOM_NEEDS, NEEDS
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError

from optbench import models
from optbench.compose.checks import check_config
from optbench.config.schema import seed_list
from optbench.errors import ConfigError
from optbench.optimizers import registry
from optbench.optimizers.build import build_optimizer, optimizer_class, optimizer_kwargs

from conftest import compose_config, sweep_plan


def options(group: str) -> list[str]:
    folder = files("optbench.configs").joinpath(group)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


OPTIMIZERS = sorted(registry.own_configs())  # tests/test_library.py: the generated ones
EXPERIMENTS = options("experiment")

# The defining hyperparameters of the variants that are not torch.optim's defaults.
VARIANTS = {
    "momentum": {"momentum": 0.9},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "amsgrad": {"amsgrad": True},
    "rmsprop_momentum": {"momentum": 0.9},
    "rmsprop_centered": {"centered": True},
}
BUILT_IN = [name for name in OPTIMIZERS if name != "custom"]


def test_the_contracted_names_exist():
    foundation = "sgd momentum nesterov adagrad adadelta rmsprop adam amsgrad adamw adamax"
    more = "asgd rprop lbfgs sparse_adam nadam radam rmsprop_momentum rmsprop_centered custom"
    textbook = " ".join(
        f"textbook_{n}"
        for n in "sgd momentum nesterov adagrad adadelta rmsprop adam adamw adamax".split()
    )
    assert set(OPTIMIZERS) == set(f"{foundation} {more} {textbook}".split())
    assert options("dataset") == ["cifar10", "custom", "fashion_mnist", "mnist"]
    assert options("model") == ["custom", "ffnn", "lenet"]
    assert {"wizard_ffnn", "examples_cnn", "simple_nn"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("group", ["dataset", "model", "optimizer", "experiment", "debug"])
def test_every_option_of_every_group_composes_and_passes_the_checks(group):
    for name in OPTIMIZERS if group == "optimizer" else options(group):
        needs = (
            CUSTOM_NEEDS[group]
            if name == "custom" and group != "optimizer"
            else NEEDS.get(name, [])
        )
        cfg = compose_config(f"{group}={name}", *needs)
        check_config(cfg, [cfg.optimizer])


@pytest.mark.parametrize("name", BUILT_IN)
def test_optimizer_defaults_are_torch_optims_defaults(name):
    # The file itself, before any experiment sets its protocol's values.
    optimizer = OmegaConf.load(files("optbench.configs").joinpath(f"optimizer/{name}.yaml"))
    assert optimizer.name == name
    signature = inspect.signature(optimizer_class(optimizer))
    expected = {**{k: p.default for k, p in signature.parameters.items()}, **VARIANTS.get(name, {})}
    for key, value in optimizer_kwargs(optimizer).items():
        assert value == expected[key], f"{name}.{key}"


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_optimizer_builds_on_both_models(name):
    cfg = compose_config(f"optimizer={name}")
    for model_name in ("ffnn", "lenet") if name != "sparse_adam" else ("ffnn",):
        model_cfg = compose_config(f"model={model_name}", *NEEDS.get(name, [])).model
        model = models.build_model(model_cfg, cfg.dataset, seed=0)
        optimizer = build_optimizer(cfg.optimizer, model.parameters())
        assert isinstance(optimizer, optimizer_class(cfg.optimizer))
        assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
            p.numel() for p in model.parameters()
        )


def test_experiment_sets_protocol_hyperparameters_and_the_command_line_wins():
    assert compose_config("optimizer=sgd").optimizer.lr == 0.1  # wizard_ffnn
    assert compose_config("optimizer=nesterov").optimizer.lr == 0.1
    assert compose_config("optimizer=adam").optimizer.lr == 0.001
    assert compose_config("optimizer=sgd", "optimizer.lr=0.05").optimizer.lr == 0.05
    cnn = compose_config("experiment=examples_cnn", "optimizer=sgd").optimizer
    assert (cnn.lr, cnn.momentum) == (0.01, 0.5)
    # the preset's dataset and model values apply to the choices it names, nested keys
    # given on the command line still win, and another choice keeps its own file's values
    simple = compose_config("experiment=simple_nn", "dataset.normalize.mean=[0.2]")
    assert (simple.model.hidden, dict(simple.dataset.normalize)) == (
        128,
        {"mean": [0.2], "std": [0.5]},
    )
    other = compose_config("experiment=simple_nn", "dataset=fashion_mnist", "model=lenet")
    assert (other.dataset.normalize, other.model.hidden) == (None, 500)  # lenet.yaml's


def test_sweep_composes_each_optimizer_of_the_experiment():
    optimizers = sweep_plan("optimizers=[sgd,adam]").optimizers
    assert [o.name for o in optimizers] == ["sgd", "adam"]
    assert [o.lr for o in optimizers] == [0.1, 0.001]
    default = sweep_plan()
    assert (
        [o.name for o in default.optimizers]
        == default.config["optimizers"]
        == [
            "sgd",
            "momentum",
            "nesterov",
            "adam",
            "adagrad",
            "adadelta",
            "adamax",
            "rmsprop",
        ]
    )


def test_the_schema_rejects_misspelt_keys_and_wrong_types():
    with pytest.raises(ConfigCompositionException) as error:
        compose_config("train.epoch=3")
    assert isinstance(error.value.__cause__, ConfigAttributeError)
    with pytest.raises(ConfigCompositionException) as error:
        compose_config("train.epochs=abc")
    assert isinstance(error.value.__cause__, ValidationError)
    with pytest.raises(ConfigCompositionException):
        compose_config("device=gpu")


@pytest.mark.parametrize(
    ("seeds", "expected"), [(1, [0]), (5, [0, 1, 2, 3, 4]), ([3, 7, 11], [3, 7, 11])]
)
def test_seed_list(seeds, expected):
    assert seed_list(seeds) == expected


@pytest.mark.parametrize("seeds", [0, -1, [], [1, 1], [-2], [1.5], True, "x"])
def test_bad_seeds_are_rejected(seeds):
    with pytest.raises(ConfigError, match="seeds"):
        seed_list(seeds)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=0", "train.batch_size=0"),
        ("train.batch_size=-5", "train.batch_size=-5"),
        ("optimizer.lr=-0.1", "Invalid learning rate: -0.1"),
        ("dataset.train_size=0", "dataset.train_size=0"),
        ("dataset.train_size=60001", "from 1 to 60000"),
        ("train.epochs=0", "train.epochs=0"),
        ("train.batch_size=60001", "larger than the training set"),
        ("train.eval_every=0", "train.eval_every=0"),
    ],
)
def test_check_config_rejects_bad_values(override, message):
    cfg = compose_config(override)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("+", r"\+")):
        check_config(cfg, [cfg.optimizer])


def test_a_custom_optimizer_class_is_accepted_and_a_non_optimizer_is_not():
    cfg = compose_config("optimizer=adam", "optimizer._target_=torch.optim.AdamW")
    check_config(cfg, [cfg.optimizer])
    cfg = compose_config("optimizer._target_=torch.nn.Linear")
    with pytest.raises(ConfigError, match="not a torch.optim.Optimizer"):
        check_config(cfg, [cfg.optimizer])


@pytest.mark.parametrize("experiment", ["wizard_ffnn", "simple_nn"])
def test_the_three_regimes_compose_on_both_ffnn_presets(experiment):
    protocol = compose_config(f"experiment={experiment}").train
    full = compose_config(f"experiment={experiment}", "regime=full_batch").train
    pure = compose_config(f"experiment={experiment}", "regime=pure_sgd").train
    mini = compose_config(f"experiment={experiment}", "regime=mini_batch").train
    assert (full.batch_size, full.epochs) == ("full", 50)
    assert (pure.batch_size, pure.epochs) == (1, 1)
    assert (mini.batch_size, mini.epochs) == (protocol.batch_size, protocol.epochs)
    assert (
        compose_config(f"experiment={experiment}", "regime=pure_sgd", "train.epochs=2").train.epochs
        == 2
    )  # the command line still wins


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_debug_smoke_shrinks_any_experiment_and_the_command_line_still_wins(experiment):
    cfg = compose_config(f"experiment={experiment}", "debug=smoke")
    shrunk = (cfg.dataset.train_size, cfg.dataset.test_size, cfg.train.steps, cfg.train.eval_every)
    assert shrunk == (1000, 500, 20, 10)
    assert cfg.train.batch_size == compose_config(f"experiment={experiment}").train.batch_size
    cfg = compose_config(f"experiment={experiment}", "debug=smoke", "train.steps=10")
    assert cfg.train.steps == 10


def test_for_choice_values_that_would_be_ignored_are_refused(tmp_path):
    """A preset's for_choice is merged as Hydra composes it; set anywhere else, or for a group
    it cannot set, it would do nothing: the job stops with one paragraph instead."""
    with pytest.raises(ConfigError, match="not set from the command line"):
        sweep_plan("+for_choice.optimizer.adam.lr=0.5")
    presets = tmp_path / "experiment"
    presets.mkdir()
    preset = "# @package _global_\nexperiment_name: mine\nfor_choice: {%s: {sgd: {lr: 0.5}}}\n"
    (presets / "typo.yaml").write_text(preset % "optimzer")
    (presets / "mine.yaml").write_text(preset % "optimizer")
    searchpath = f"hydra.searchpath=[file://{tmp_path}]"
    with pytest.raises(ConfigError, match="valid groups: dataset, model, optimizer"):
        sweep_plan(searchpath, "experiment=typo")
    with pytest.raises(ConfigError, match="optbench's configs/experiment/ only"):
        sweep_plan(searchpath, "experiment=mine")
