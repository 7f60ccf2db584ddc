"""scripts/bench.py's counting, against hand counts and autograd; its timings are not tested
(speed is measured by running the script, never in a timed test)."""

from __future__ import annotations

import importlib.util
import logging
import time

import pytest
import torch
import torch.nn.functional as F

from optbench.training import loop

from conftest import ROOT, run_cli, sweep_plan

spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_the_lenet_kernels_are_the_hand_counted_flops():
    # conv1: 64 images x 20 channels x 24x24 outputs x 25 taps x 2; conv2: 64 x 50 x 8x8 x
    # (20 x 25) x 2; fc1: 64 x 800 x 500 x 2; fc2: 64 x 500 x 10 x 2
    conv1, conv2 = 64 * 20 * 24 * 24 * 25 * 2, 64 * 50 * 8 * 8 * 500 * 2
    fc1, fc2 = 64 * 800 * 500 * 2, 64 * 500 * 10 * 2
    expected = {
        "conv1 forward": conv1,
        "conv1 weight gradient": conv1,  # the images need no gradient
        "conv2 forward": conv2,
        "conv2 input and weight gradients": 2 * conv2,
        **{f"fc1 {k}": fc1 for k in ("forward", "weight gradient", "input gradient")},
        **{f"fc2 {k}": fc2 for k in ("forward", "weight gradient", "input gradient")},
    }
    counted = {name: flops for name, flops, _ in bench.lenet_kernels()}
    assert counted == expected
    assert sum(counted.values()) == 843_648_000


def test_the_convolution_kernels_compute_autograds_gradients_in_both_layouts():
    """The timed backward call is the one autograd makes: the same gradients, either layout."""
    kernels = {name: calls for name, _, calls in bench.lenet_kernels(batch=4)}
    for layout, backward in kernels["conv2 input and weight gradients"].items():
        grad_input, grad_weight, grad_bias = backward()
        g, x, w = (t.detach() for t in backward.args[:3])
        x, w = x.requires_grad_(), w.requires_grad_()
        bias = torch.zeros(len(w), requires_grad=True)
        F.conv2d(x, w, bias).backward(g)
        assert torch.allclose(grad_input, x.grad, rtol=1e-4, atol=1e-5), layout
        assert torch.allclose(grad_weight, w.grad, rtol=1e-4, atol=1e-4), layout
        assert torch.allclose(grad_bias, bias.grad, rtol=1e-4, atol=1e-4), layout


def test_the_engine_logs_its_first_evaluation_of_a_one_step_run(caplog):
    """bench.py's start-up ends at this log line (what the engine logs without a terminal)."""
    plan = sweep_plan("optimizers=[sgd]", "seeds=1", "debug=smoke", "train.steps=1")
    with caplog.at_level(logging.INFO, logger="optbench"):
        loop.train(plan, progress=False)
    evaluated = [r.getMessage() for r in caplog.records if bench.EVALUATED in r.getMessage()]
    assert len(evaluated) == 1 and evaluated[0].startswith(bench.EVALUATED)


def test_the_start_up_is_read_from_the_time_stamp_of_optbenchs_log(tmp_path, data_dir):
    """bench.started_at parses the line in the log optbench really writes (Hydra's format):
    a time between the command's start and its end."""
    before = time.time()
    done = run_cli("run", "debug=smoke", "train.steps=1", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    after = time.time()
    assert done.returncode == 0, done.stderr
    started = bench.started_at((tmp_path / "optbench.log").read_text())
    assert before - 0.001 <= started <= after  # the stamp has milliseconds


where = importlib.util.spec_from_file_location("where", ROOT / "scripts" / "where_time_goes.py")
where_time_goes = importlib.util.module_from_spec(where)
where.loader.exec_module(where_time_goes)


def test_a_profiled_sweep_spends_its_training_time_in_the_step_and_says_where(data_dir):
    """A real sweep under py-spy: the worker processes' CPU time is almost all in the step's
    parts (forward and backward, the update, the batch), with the matrix products apart, and
    the job process's in its start-up and its results; the seconds add up to the table."""
    workers, job, wall, updates = where_time_goes.profile(
        ["optimizers=[sgd,adam]", "seeds=2", "train.steps=600", "train.eval_every=200"]
    )
    step = ("forward and backward: matrix products", "forward and backward: the rest")
    step += ("optimizer update", "batch gathering")
    assert workers["forward and backward: matrix products"] > 0
    assert sum(workers[part] for part in step) >= 0.8 * sum(workers.values()), workers
    assert job["start-up: imports"] > 0 and job["results, statistics and plots"] > 0, job
    assert 0 < sum(workers.values()) + sum(job.values()) < 3 * wall
    lines = where_time_goes.table(workers, job, wall, updates)
    assert lines[0].startswith("wall time") and any("optimizer update" in x for x in lines)
    assert set(updates) <= {"sgd", "adam", where_time_goes.SHARED}, updates
    assert sum(updates.values()) == pytest.approx(workers["optimizer update"])


def test_each_sample_goes_to_the_part_of_its_innermost_frame():
    """part_of by hand-written stacks (outermost frame first, as py-spy writes them)."""
    loop_frames = [
        "_work (optbench/training/workers.py:1)",
        "step_loop (optbench/training/loop.py:2)",
    ]
    matmul = [*loop_frames, "ffnn_loss_and_grads (optbench/models.py:3)", "mkl_blas_sgemm_kernel"]
    assert where_time_goes.part_of(matmul, True) == "forward and backward: matrix products"
    softmax = [*loop_frames, "ffnn_loss_and_grads (optbench/models.py:3)", "log_softmax_lastdim"]
    assert where_time_goes.part_of(softmax, True) == "forward and backward: the rest"
    update = [*loop_frames, "OptimizerGroup.step (optbench/training/trainers.py:4)", "fused"]
    assert where_time_goes.part_of(update, True) == "optimizer update"
    imports = ["<module> (optbench:8)", "_find_and_load (<frozen importlib._bootstrap>:1)"]
    assert where_time_goes.part_of(imports, False) == "start-up: imports"


def test_each_update_sample_goes_to_its_optimizer():
    """optimizer_of by hand-written stacks: the innermost frame in an optimizer's own module
    (torch.optim's or pytorch_optimizer's), past their shared base class."""
    group = ["step_loop (optbench/training/loop.py:2)", "step (optbench/training/trainers.py:4)"]
    base = "wrapper (torch/optim/optimizer.py:5)"
    adadelta = [*group, base, "_multi_tensor_adadelta (torch/optim/adadelta.py:6)", "add_"]
    assert where_time_goes.optimizer_of(adadelta) == "adadelta"
    soap = [*group, base, "step (pytorch_optimizer/optimizer/soap.py:7)", "project"]
    assert where_time_goes.optimizer_of(soap) == "soap"
    shared = [*group, base, "_use_grad (torch/optim/optimizer.py:8)"]
    assert where_time_goes.optimizer_of(shared) == where_time_goes.SHARED
