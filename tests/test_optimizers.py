"""Every optimizer of optbench's own configs trains; L-BFGS, SparseAdam, users' own optimizers and
divergence each work as documented."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from constants import LINE_SEARCH, NEEDS
from omegaconf import OmegaConf

from optbench import models
from optbench.compose.checks import check_config
from optbench.data import in_memory
from optbench.errors import ConfigError
from optbench.optimizers import build, registry
from optbench.plan import OptimizerSpec
from optbench.results import store
from optbench.training import loop
from optbench.training.trainers import RunTrainer

from conftest import ROOT, compose_config, run_cli, run_plan, sweep_plan

# optbench's own configs; tests/test_library.py trains pytorch_optimizer's registry
REGISTRY = sorted(registry.own_configs() - {"custom"})
# What each optimizer needs beside the shared protocol below.
# L-BFGS is tested where it is meant to work: full batch, with a strong-Wolfe line search,
# whose sufficient-decrease condition makes every step lower the loss. (On mini-batches its
# curvature pairs mix batches and the loss may rise: see docs/reproducibility.md.)
TRAINING_NEEDS = {
    "sparse_adam": NEEDS["sparse_adam"],
    "lbfgs": [LINE_SEARCH, "train.batch_size=full", "train.steps=10", "train.eval_every=5"],
}
# Documented exceptions to "lowers the training loss within 60 mini-batch steps":
# Rprop uses only the gradient's sign, which is noisy on mini-batches of 50.
MAY_NOT_LOWER = {"rprop"}
SMALL = ["dataset.train_size=2000", "train.batch_size=50", "train.steps=60", "train.eval_every=30"]


@pytest.mark.parametrize("name", REGISTRY)
def test_every_optimizer_trains_with_finite_losses(data_dir, name):
    plan = run_plan(
        f"optimizer={name}", "seeds=2", *SMALL, *TRAINING_NEEDS.get(name, [])
    )  # checked
    runs = loop.train(plan, progress=False)
    assert not runs["diverged"].any()
    assert runs[["train_loss", "test_loss", "test_accuracy"]].map(math.isfinite).all().all()
    if name not in MAY_NOT_LOWER:
        for _, rows in runs.groupby("seed"):
            first, last = rows.sort_values("step")["train_loss"]
            assert last < first, (name, first, last)


@pytest.mark.slow
def test_lbfgs_counts_its_gradient_evaluations(data_dir):
    runs = loop.train(sweep_plan("optimizers=[sgd,lbfgs]", *SMALL), progress=False)
    sgd, lbfgs = (runs[runs.optimizer == name] for name in ("sgd", "lbfgs"))
    assert (sgd["grad_evals"] == sgd["step"]).all()  # one forward + backward per step
    assert (lbfgs["grad_evals"] > lbfgs["step"]).all()  # several per L-BFGS step
    assert (lbfgs["grad_evals"] <= 25 * lbfgs["step"]).all()  # max_iter 20, max_eval 25


def test_sparse_input_ffnn_equals_the_dense_one(data_dir):
    cfg = compose_config()
    dense = models.build_model(cfg.model, cfg.dataset, seed=11)
    sparse_cfg = compose_config("model.sparse_input=true")
    sparse = models.build_model(sparse_cfg.model, sparse_cfg.dataset, seed=11)
    tensors = in_memory.load(
        compose_config("dataset.train_size=256").dataset, data_dir, torch.device("cpu")
    )
    x, y = tensors.train_x, tensors.train_y
    assert 0.1 < (x != 0).float().mean() < 0.3  # MNIST's pixels are about 19% non-zero
    out_dense, out_sparse = dense(x), sparse(x)
    torch.testing.assert_close(out_sparse, out_dense, rtol=1e-5, atol=1e-5)
    F.cross_entropy(out_dense, y).backward()
    F.cross_entropy(out_sparse, y).backward()
    assert sparse.fc1.weight.grad.is_sparse
    torch.testing.assert_close(
        sparse.fc1.weight.grad.to_dense().t(), dense.fc1.weight.grad, rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(sparse.fc1_bias.grad, dense.fc1.bias.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sparse.fc2.weight.grad, dense.fc2.weight.grad, rtol=1e-5, atol=1e-6)


def test_sparse_adam_without_sparse_gradients_fails_before_training():
    cfg = compose_config("optimizer=sparse_adam")
    with pytest.raises(ConfigError, match="model.sparse_input=true"):
        check_config(cfg, [cfg.optimizer])
    cfg = compose_config("optimizer=sparse_adam", "model=lenet")
    with pytest.raises(ConfigError, match="sparse gradients"):
        check_config(cfg, [cfg.optimizer])


def test_a_users_own_optimizer_runs_without_changing_optbench(data_dir, tmp_path, monkeypatch):
    # In process: an optimizer class defined only in the tests (its step takes no closure).
    plan = run_plan("optimizer=custom", "optimizer._target_=custom_optimizers.SignSGD", *SMALL)
    runs = loop.train(plan, progress=False)
    first, last = runs["train_loss"]
    assert last < first and runs["optimizer"].unique().tolist() == ["custom"]
    # Through the CLI, with the optimizer as a YAML file in the user's own config folder.
    user_configs = tmp_path / "my_configs" / "optimizer"
    user_configs.mkdir(parents=True)
    for name in ("my_signsgd", "signsgd"):  # signsgd: optbench has one of that name
        (user_configs / f"{name}.yaml").write_text(
            f"name: {name}\n_target_: custom_optimizers.SignSGD\nlr: 0.001\n"
        )
    monkeypatch.syspath_prepend(ROOT / "tests")  # where the user's package would be importable
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'my_configs'}]"
    out = f"hydra.run.dir={tmp_path / 'out'}"
    result = run_cli("run", "optimizer=my_signsgd", *SMALL, searchpath, out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert runs["optimizer"].unique().tolist() == ["my_signsgd"]
    # optbench's signsgd (pytorch_optimizer's) comes first in Hydra's search path: refused
    hidden = run_cli("run", "optimizer=signsgd", *SMALL, searchpath, cwd=tmp_path)
    assert hidden.returncode == 2 and "rename your file" in hidden.stderr
    assert str(user_configs / "signsgd.yaml") in hidden.stderr


def test_a_diverging_run_stops_and_the_rest_go_on(data_dir, tmp_path):
    plan = sweep_plan("optimizers=[sgd,adam]", "seeds=3", *SMALL)
    sgd, adam = plan.optimizers
    wild = OptimizerSpec.of({**sgd.config, "lr": 1e12})  # sgd blows up; adam is untouched
    runs = loop.train(dataclasses.replace(plan, optimizers=[wild, adam]), progress=False)
    sgd, adam = runs[runs.optimizer == "sgd"], runs[runs.optimizer == "adam"]
    assert sgd["diverged"].all() and sgd["test_accuracy"].isna().all()
    assert (sgd["grad_evals"] == 30).all()  # found at the step-30 evaluation; no step since
    assert not adam["diverged"].any() and adam["test_accuracy"].gt(0.5).all()
    summary = store.summarize(runs)
    final = summary[summary.step == 60].set_index("optimizer")
    assert (final.loc["sgd", "n"], final.loc["sgd", "n_diverged"]) == (0, 3)
    assert final.loc["sgd", "diverged_fraction"] == 1.0
    assert math.isnan(final.loc["sgd", "test_accuracy_mean"])
    assert (final.loc["adam", "n"], final.loc["adam", "diverged_fraction"]) == (3, 0.0)
    assert final.loc["adam", "test_accuracy_mean"] == pytest.approx(
        adam[adam.step == 60]["test_accuracy"].mean()
    )


@functools.cache
def every_elementwise_config() -> dict[str, dict]:
    """Every element-wise optimizer config (optbench's own and the registry's), filled for a
    training of 40 steps: the settings that may share an optimizer call or a stack."""
    configs = registry.configs() | {
        name: OmegaConf.to_container(compose_config(f"optimizer={name}").optimizer)
        for name in REGISTRY
    }
    filled = {}
    for name, config in configs.items():
        if config.get("elementwise"):
            config = OmegaConf.create(config)
            build.fill_from_protocol(config, 40)
            filled[name] = OmegaConf.to_container(config, resolve=True)
    return filled


def registered_for(operator: str, device_type: str) -> bool:
    """Whether torch's dispatcher lists a kernel of the operator for the device type, read
    from its printed table (another path than build.has_fused_kernel's query)."""
    table = torch._C._dispatch_dump(f"aten::{operator}")
    return any(line.startswith(f"{device_type.upper()}: registered") for line in table.splitlines())


def steps_fused(config, device_type: str) -> bool:
    """Whether the config's optimizer, built with fused=True, steps a parameter on the
    device."""
    parameter = torch.zeros(3, device=device_type, requires_grad=True)
    parameter.grad = torch.ones_like(parameter)
    try:
        build.build_optimizer(config, [parameter], "fused").step()
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_the_kernel_chosen_per_device_is_one_the_installed_torch_has(device_type):
    """Fused only where torch.optim runs fused kernels on the device, this torch was built
    with the class's fused operator for it, and, on a device this machine has, the
    optimizer steps there with fused=True (torch 2.11 has a CUDA kernel of _fused_adagrad_
    but its Adagrad refuses fused=True on CUDA); ASGD capturable where torch allows it (on
    the CPU it cannot be)."""
    from torch.optim.optimizer import _get_capturable_supported_devices
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    present = device_type == "cpu" or torch.cuda.is_available()
    chosen = {}
    for name, config in every_elementwise_config().items():
        chosen[name] = kernel = build.implementation(config, device_type)
        cls = build.optimizer_class(config)
        operator = build.FUSED_OPERATORS.get(cls)
        takes = inspect.signature(cls).parameters
        fused = (
            "fused" in takes
            and not {"fused", "foreach", "differentiable"} & set(config)
            and operator is not None
            and device_type in _get_fused_kernels_supported_devices()
            and registered_for(operator, device_type)
            and (not present or steps_fused(config, device_type))
        )
        assert (kernel == "fused") == fused, name
    capturable = device_type in _get_capturable_supported_devices()
    assert chosen["asgd"] == ("foreach, capturable" if capturable else "foreach")
    assert chosen["rmsprop"] == "foreach"
    assert {chosen[name] for name in ("sgd", "adam", "adamw")} == {"fused"}


def test_no_stacked_optimizer_reads_its_state_on_the_host_on_a_gpu():
    """On the meta device every host read fails, as each would make a GPU wait: every
    element-wise setting with the kernel chosen for CUDA steps there without one (the fused
    and capturable kernels cannot run on it, and read nothing by design). ASGD's plain
    foreach step reads its state on the host: why CUDA takes its capturable one."""
    probed = 0
    for config in every_elementwise_config().values():
        kernel = build.implementation(config, "cuda")
        if kernel in ("fused", "foreach, capturable"):
            continue
        parameters = [torch.zeros(4, 3, device="meta"), torch.zeros(3, device="meta")]
        optimizer = build.build_optimizer(config, parameters, kernel)
        for _ in range(3):
            for parameter in parameters:
                parameter.grad = torch.zeros_like(parameter)
            optimizer.step()
        probed += 1
    assert probed >= 30
    parameter = torch.zeros(3, device="meta")
    parameter.grad = torch.zeros_like(parameter)
    asgd = build.build_optimizer(every_elementwise_config()["asgd"], [parameter], "foreach")
    with pytest.raises(RuntimeError, match="item"):
        asgd.step()


def test_lbfgs_takes_a_closure_and_keeps_the_default_memory_layout():
    """L-BFGS flattens its gradients with view(-1): its traits keep the model's weights in
    the default layout (not channels-last), and its step evaluates the loss itself."""
    plan = run_plan("optimizer=lbfgs", "model=lenet", "debug=smoke")
    traits = plan.optimizers[0].traits
    assert traits.step_takes_closure and not traits.channels_last and not traits.elementwise
    trainer = RunTrainer(plan.runs[0], plan.model, plan.dataset, torch.device("cpu"))
    assert trainer.model.conv1.weight.is_contiguous()
    adam = run_plan("optimizer=adam", "model=lenet", "debug=smoke")
    trainer = RunTrainer(adam.runs[0], adam.model, adam.dataset, torch.device("cpu"))
    assert trainer.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
