"""What each optimizer costs: state bytes per parameter against hand counts, and costs.csv
with the report and plot of a real sweep."""

from __future__ import annotations

import pandas as pd
import pytest
from constants import PNG_MAGIC, SMOKE

from optbench.training import costs

from conftest import run_cli, sweep_plan

# Hand counts, bytes per model parameter of float32 state: SGD without momentum keeps
# nothing, momentum one buffer, Adam two moments (plus a 4-byte step per parameter tensor),
# L-BFGS its history of 100 directions and 100 steps (plus a direction and a gradient).
EXPECTED = {"sgd": (0, 0), "momentum": (4, 4), "adam": (8, 8.001), "lbfgs": (808, 808.02)}


def test_state_bytes_per_parameter_equal_hand_counts(data_dir, tmp_path):
    """costs.csv as a sweep writes it (costs.write_costs), against the hand counts."""
    plan = sweep_plan("optimizers=[sgd,momentum,adam,lbfgs]", SMOKE)
    settings = {spec.name: spec.config for spec in plan.optimizers}
    written = costs.write_costs(tmp_path, plan, settings)  # the table, as the file holds it
    table = pd.read_csv(tmp_path / costs.COSTS_CSV)
    pd.testing.assert_frame_equal(written.reset_index(drop=True), table, check_dtype=False)
    assert table["optimizer"].tolist() == list(settings)
    for measured in table.to_dict("records"):
        low, high = EXPECTED[measured["optimizer"]]
        assert low <= measured["state_bytes_per_param"] <= high, measured
        assert measured["params"] == 784 * 100 + 100 + 100 * 10 + 10
        assert measured["ms_per_step"] > 0 and measured["device"] == "cpu"


@pytest.mark.slow
def test_a_sweep_writes_costs_with_its_plot_and_report_section(tmp_path, data_dir):
    out = tmp_path / "out"
    done = run_cli("sweep", "optimizers=[sgd,adam]", SMOKE, f"hydra.run.dir={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out / "costs.csv")
    assert table["optimizer"].tolist() == ["sgd", "adam"]
    per_param = table["state_bytes"] / table["params"]
    assert per_param.tolist() == pytest.approx(table["state_bytes_per_param"].tolist())
    assert (out / "costs.png").read_bytes().startswith(PNG_MAGIC)
    assert "What each optimizer costs" in (out / "report.md").read_text()
