"""pytorch_optimizer's registry: every optimizer trains, or is refused with its reason; the
declarations of optbench.optimizers.registry (element-wise, random, Hessian, Muon groups) hold."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import math
import random

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from constants import SMOKE
from omegaconf import OmegaConf

from optbench import models
from optbench.compose import optimizer_checks
from optbench.data.in_memory import load
from optbench.errors import ConfigError
from optbench.optimizers import build, catalog, registry
from optbench.plan import OptimizerSpec
from optbench.training import checkpoints, loop
from optbench.training.trainers import Batches, RunTrainer, evaluate

from conftest import ROOT, run_cli, run_plan, sweep_plan

CONFIGS = registry.configs()  # optbench name -> config
REFUSED = sorted(name for name, config in CONFIGS.items() if registry.refusal(config))
TRAINABLE = sorted(set(CONFIGS) - set(REFUSED))
ELEMENTWISE = sorted(name for name, config in CONFIGS.items() if config["elementwise"])
RESULT_COLUMNS = ["train_loss", "last_batch_loss", "test_loss", "test_accuracy"]
# debug=smoke's 1,000 images for 40 steps: long enough for each optimizer's loss to go down
# from one evaluation window to the next
LONGER = ("train.steps=40", "train.eval_every=20")

# Documented exceptions to "lowers the training loss at the library's defaults": the
# setting that does, and why the defaults do not.
NOT_AT_DEFAULTS = {
    "adahessian": ({"lr": 0.01}, "its default lr=0.1 diverges on the ffnn within 20 steps"),
    "pto_lbfgs": (
        {"lr": 0.1},
        "at its defaults (lr=1, no line search) its mini-batch loss passes 2^24 in 20 steps",
    ),
}


def settings(names: list[str], plan) -> list[OptimizerSpec]:
    """The optimizer settings `optimizers=[NAMES]` gives, filled in and checked as the CLI
    checks them (optimizer_checks.check_optimizer_config), without composing each through
    Hydra (a tenth of a second each): test_the_generated_configs... shows the files Hydra
    reads are these configs, and test_composed_settings... that composing gives the same."""
    model = models.build_model(plan.model, plan.dataset, seed=0)
    step_plan = plan.steps
    result = []
    for name in names:
        config = OmegaConf.create(CONFIGS[name])
        build.fill_from_protocol(config, step_plan.total_steps)
        optimizer_checks.check_optimizer_config(config, model)
        result.append(OptimizerSpec.of(config))
    return result


def test_composed_settings_equal_the_library_configs(data_dir):
    chosen = ["lion", "pto_adam", "muon", "ranger21", "galore"]
    plan = sweep_plan(f"optimizers=[{','.join(chosen)}]", SMOKE)
    assert plan.optimizers == settings(chosen, plan)
    assert [spec.config for spec in plan.optimizers] == [
        spec.config for spec in settings(chosen, plan)
    ]


def training(plan, **changes) -> pd.DataFrame:
    return loop.train(dataclasses.replace(plan, **changes), progress=False).drop(columns="wall_s")


def test_the_generated_configs_match_the_installed_library():
    """configs/optimizer/<name>.yaml and src/optbench/optimizers/pytorch_optimizer.yaml are what
    scripts/optimizer_library.py writes from the installed pytorch_optimizer (its classes'
    own signatures): nothing edited by hand, nothing stale after an upgrade."""
    spec = importlib.util.spec_from_file_location(
        "generator", ROOT / "scripts/optimizer_library.py"
    )
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    wanted = generator.files()
    for path, text in wanted.items():
        assert path.read_text() == text, f"{path} is out of date: run `make library`"
    assert len(wanted) == len(registry.table()["optimizers"]) + 1 >= 129


@pytest.mark.slow
def test_every_registry_optimizer_trains_or_is_refused_with_its_reason(data_dir, capsys):
    """A real short training (1,000 MNIST images, 40 steps) of every optimizer at the
    library's defaults, as `optbench sweep optimizers=[...]` checks them: finite losses that
    go down, or the documented reason they do not; the others are refused before training,
    with their reason."""
    plan = run_plan(SMOKE, *LONGER, "seeds=1")
    defaults = settings(TRAINABLE, plan)
    documented = [
        OptimizerSpec.of({**spec.config, **NOT_AT_DEFAULTS[spec.name][0]})
        for spec in defaults
        if spec.name in NOT_AT_DEFAULTS
    ]
    runs = training(plan, optimizers=defaults + documented)
    for spec in defaults + documented:
        rows = runs[(runs.optimizer == spec.name) & (runs.hyperparameters == spec.hyperparameters)]
        assert len(rows) == 2, spec.name
        if spec in defaults and spec.name in NOT_AT_DEFAULTS:
            assert rows["diverged"].all(), spec.name  # as documented
            continue
        assert not rows["diverged"].any(), spec.name
        assert rows[RESULT_COLUMNS].map(math.isfinite).all().all(), spec.name
        first, last = rows.sort_values("step")["train_loss"]
        assert last < first, (spec.name, first, last)
    for name in REFUSED:
        with pytest.raises(ConfigError, match="cannot train on optbench's models"):
            run_plan(f"optimizer={name}", SMOKE)
    with capsys.disabled():
        print(f"\npytorch_optimizer: {len(TRAINABLE)} train, {len(REFUSED)} refused")


@pytest.mark.slow
def test_the_declared_elementwise_ones_train_the_same_grouped_stacked_and_alone(data_dir):
    """What the engine guarantees for an element-wise optimizer, for each one the table
    declares: in an OptimizerGroup (the CPU's layout) bit for bit as alone; stacked (a GPU's
    layout, here on the CPU) within the stated tolerance of float rounding."""
    own = registry.own_configs()
    assert set(ELEMENTWISE) == {registry.config_name(n, own) for n in registry.ELEMENTWISE}
    plan = run_plan(SMOKE, "seeds=2")
    plan = dataclasses.replace(plan, optimizers=settings(ELEMENTWISE, plan))
    together = training(plan)
    for spec in plan.optimizers:
        alone = training(plan, optimizers=[spec], seeds=[1]).reset_index(drop=True)
        picked = together[(together.optimizer == spec.name) & (together.seed == 1)]
        pd.testing.assert_frame_equal(picked.reset_index(drop=True), alone, check_exact=True)
    one_step = plan.trained_for({**plan.train, "steps": 1, "eval_every": 1})
    stacked, alone = (training(one_step, stack_runs=mode) for mode in ("always", "never"))
    for column in RESULT_COLUMNS:
        torch.testing.assert_close(
            torch.tensor(stacked[column].to_numpy()),
            torch.tensor(alone[column].to_numpy()),
            rtol=1e-6,
            atol=0,
            msg=column,
        )


def steps_draw_random_numbers(config: dict, plan, tensors, count: int = 3) -> bool:
    """Whether building the optimizer and `count` steps, outside the engine, draw from a
    global random generator: torch's, NumPy's or Python's."""
    model = models.build_model(plan.model, plan.dataset, seed=0)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    optimizer = build.build_optimizer(config, model)
    take_steps(optimizer, model, config, tensors, count)
    return not (
        torch.equal(states[0], torch.get_rng_state())
        and np.array_equal(states[1], np.random.get_state()[1])
        and states[2] == random.getstate()
    )


# Settings under which a declared optimizer draws within 3 steps (by default it draws later)
DRAWS_SOONER = {"scalableshampoo": {"preconditioning_compute_steps": 1}}
# Settings under which an optimizer of registry.RANDOM_WHEN draws
DRAWS_WHEN = {"sara": {"lambda_rank": 0.1}}


def take_steps(optimizer, model, config: dict, tensors, count: int) -> None:
    """count steps on the first 64 training images, outside the engine."""
    hessian = "hessian" in registry.needs(config)
    x, y = tensors.train_x[:64], tensors.train_y[:64]

    @torch.enable_grad()
    def closure():
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward(create_graph=hessian)
        return loss

    for _ in range(count):
        optimizer.step(closure)


def test_the_optimizers_that_draw_random_numbers_are_the_declared_ones(data_dir):
    """Each declared one draws from torch's global generator (the engine seeds it per run
    and step), and no other does: the declaration is what keeps a run independent of what
    trains beside it."""
    plan = run_plan(SMOKE, f"data_dir={data_dir}")
    tensors = load(plan.dataset, plan.data_dir, torch.device("cpu"))
    drawing = set()
    for name in TRAINABLE:
        config = {**filled(CONFIGS[name]), **DRAWS_SOONER.get(name, {})}
        if steps_draw_random_numbers(config, plan, tensors):
            drawing.add(registry.registry_name(config))
        assert ("random" in registry.needs(config)) == (registry.registry_name(config) in drawing)
    assert drawing == set(registry.RANDOM)
    for name, values in DRAWS_WHEN.items():
        config = {**filled(CONFIGS[name]), **values}
        assert "random" in registry.needs(config), name
        assert steps_draw_random_numbers(config, plan, tensors), name


def test_every_optimizers_state_comes_back_from_a_checkpoint(data_dir, tmp_path):
    """After 3 steps, each optimizer's state goes through checkpoints.save and load
    (torch.load with weights_only: registry.CHECKPOINT_CLASSES allowed, AdaShift's deque
    saved as a list) and loads into a new optimizer: an interrupted run of any resumes."""
    plan = run_plan(SMOKE, f"data_dir={data_dir}")
    tensors = load(plan.dataset, plan.data_dir, torch.device("cpu"))
    for name in TRAINABLE:
        config = filled(CONFIGS[name])
        model = models.build_model(plan.model, plan.dataset, seed=0)
        optimizer = build.build_optimizer(config, model)
        take_steps(optimizer, model, config, tensors, 3)
        path = tmp_path / f"{name}.pt"
        checkpoints.save(path, {"job": name, "optimizer": optimizer.state_dict()})
        state = checkpoints.load(path)
        assert state is not None and path.exists(), name  # not set aside as unreadable
        build.build_optimizer(config, model).load_state_dict(state["optimizer"])


def filled(config: dict) -> dict:
    """A config with the values the protocol supplies (Ranger21's num_iterations) for a
    training of 40 steps."""
    config = OmegaConf.create(config)
    build.fill_from_protocol(config, 40)
    return OmegaConf.to_container(config)


@pytest.mark.slow
def test_a_random_optimizers_run_is_its_own_whatever_trains_beside_it(data_dir):
    """Two worker threads train the declared random ones side by side; each run equals the
    same run trained alone, bit for bit (trainers.RunTrainer.seeded)."""
    names = ["apollo", "kron", "sophiah", "spam"]
    plan = sweep_plan(f"optimizers=[{','.join(names)}]", SMOKE, "seeds=2", "threads=2")
    together = training(plan)
    for spec in plan.optimizers:
        alone = training(plan, optimizers=[spec], seeds=[1], threads=1)
        picked = together[(together.optimizer == spec.name) & (together.seed == 1)]
        pd.testing.assert_frame_equal(picked.reset_index(drop=True), alone.reset_index(drop=True))


def test_a_schedule_free_optimizer_is_evaluated_at_its_averaged_weights(data_dir):
    """Schedule-free AdamW evaluates at x, trains at y: the trainer's test is the model after
    optimizer.eval(), and training goes on from the weights it had before."""
    plan = run_plan("optimizer=schedulefreeadamw", SMOKE)
    tensors = load(plan.dataset, plan.data_dir, torch.device("cpu"))
    trainer = RunTrainer(plan.runs[0], plan.model, plan.dataset, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        indices = {0: torch.randint(0, 1000, (64,), generator=generator)}
        trainer.step(tensors, Batches(tensors, indices))
    weights = [p.clone() for p in trainer.model.parameters()]
    reported = trainer.test(tensors, 1000)[0]
    assert all(torch.equal(a, b) for a, b in zip(weights, trainer.model.parameters(), strict=True))
    at_y = evaluate(trainer.model, tensors.test_x, tensors.test_y, 1000)
    trainer.optimizer.eval()
    at_x = evaluate(trainer.model, tensors.test_x, tensors.test_y, 1000)
    assert reported == at_x != at_y


def test_each_optimizers_traits_are_what_its_built_optimizer_does():
    """The traits made once with the plan (optimizers.traits) say what the optimizer built
    on a model does: whether its step takes a closure, whether it has train/eval modes (as
    the generated table records too), how it groups the parameters."""
    plan = sweep_plan("optimizers=[sgd]", SMOKE)
    model = models.build_model(plan.model, plan.dataset, seed=0)
    for spec in settings(TRAINABLE, plan):
        traits, optimizer = spec.traits, build.build_optimizer(spec.config, model)
        takes_closure = "closure" in inspect.signature(optimizer.step).parameters
        modes = callable(getattr(optimizer, "eval", None)) and callable(
            getattr(optimizer, "train", None)
        )
        assert traits.step_takes_closure == takes_closure, spec.name
        assert traits.has_modes == modes == registry.entry(spec.config)["train_eval_modes"]
        assert traits.elementwise == traits.channels_last == spec.config["elementwise"]
        assert traits.refused is None
        muon = [group.get("use_muon") for group in optimizer.param_groups] == [True, False]
        assert (traits.parameter_groups == "muon") == muon, spec.name
    assert all(OptimizerSpec.of(CONFIGS[name]).traits.refused for name in REFUSED)


@pytest.mark.parametrize("model", ["ffnn", "lenet"])
def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(model):
    """pytorch_optimizer's convention: linear and convolution weights get the orthogonalised
    update, but the output layer, which gets AdamW's with the biases."""
    dataset = {"name": "mnist", "input_shape": [1, 28, 28], "num_classes": 10}
    net = models.build_model({"name": model}, dataset, seed=0)
    names = {id(p): name for name, p in net.named_parameters()}
    groups = build.muon_parameter_groups(net)
    muon, adamw = ([names[id(p)] for p in group["params"]] for group in groups)
    hidden = {"ffnn": ["fc1.weight"], "lenet": ["conv1.weight", "conv2.weight", "fc1.weight"]}
    assert (groups[0]["use_muon"], groups[1]["use_muon"]) == (True, False)
    assert muon == hidden[model]
    assert sorted(adamw) == sorted(set(names.values()) - set(muon))
    optimizer = build.build_optimizer(CONFIGS["muon"], net)
    assert [group["lr"] for group in optimizer.param_groups] == [0.02, 3e-4]  # muon, adamw


def test_optbench_optimizers_lists_every_optimizer_and_the_docs_table_is_current(tmp_path):
    result = run_cli("optimizers", cwd=tmp_path)
    assert result.returncode == 0
    listed = [line.split()[0] for line in result.stdout.splitlines()[1:] if line.strip()][:-1]
    assert sorted(listed) == sorted(registry.own_configs() | set(CONFIGS))
    assert f"{len(listed)} optimizers" in result.stdout
    for name in REFUSED:
        assert registry.REFUSED[registry.registry_name(CONFIGS[name])] in result.stdout
    docs = (ROOT / "docs" / "optimizers.md").read_text()
    assert catalog.text(markdown=True) in docs, (
        "docs/optimizers.md: paste `optbench optimizers --markdown`"
    )
