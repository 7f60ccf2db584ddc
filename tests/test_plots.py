"""What a reader of a plot relies on, read from the matplotlib objects the code builds: a
band that a log axis can draw, text that contrasts with its cell, lines told apart, labels
that neither overlap nor leave the figure. Drawn from the committed results (real runs)."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb

import optbench
from optbench import labels
from optbench.analysis import profiles
from optbench.report import figures, plots, suite_figures
from optbench.results import store

from conftest import ROOT

WIZARD = ROOT / "results" / "wizard_ffnn"
# Tables of a real suite (4 workloads x 11 optimizers x 3 seeds, before the workloads held
# out a validation set), kept as the figures' input: its profiles tie, as the tests need.
SUITE = ROOT / "tests" / "suite_tables"


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    return labels.label_settings(optbench.load(WIZARD).runs)


def wcag_contrast(first, second) -> float:
    """The WCAG 2.1 contrast ratio, written out from its definition."""

    def luminance(color) -> float:
        linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in color]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    light, dark = sorted([luminance(to_rgb(first)), luminance(to_rgb(second))], reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_the_loss_band_on_a_log_axis_is_the_seeds_quartiles_and_stays_positive(runs):
    summary = store.summarize(runs)
    figure = plots.curve_figure(summary, "last_batch_loss", "last batch loss", "title")
    axes = figure.axes[0]
    assert axes.get_yscale() == "log"
    final = runs[runs["step"] == runs["step"].max()]
    for name, band in zip(summary["optimizer"].unique(), axes.collections, strict=False):
        edges = band.get_paths()[0].vertices[:, 1]
        assert (edges > 0).all(), name  # mean - std went below 0 for some optimizers
        values = final.loc[final["optimizer"] == name, "last_batch_loss"].to_numpy()
        quartiles = np.percentile(values, [25, 75])  # NumPy's, on the seeds' own losses
        assert np.isclose(edges, quartiles[0]).any() and np.isclose(edges, quartiles[1]).any()
    # the committed runs have an optimizer whose mean - std is not positive: the old band
    mean, std = summary["last_batch_loss_mean"], summary["last_batch_loss_std"]
    assert (mean - std <= 0).any()
    plt.close(figure)


def test_an_accuracy_band_stays_within_zero_and_one(runs):
    summary = store.summarize(runs).assign(test_accuracy_std=0.5)  # a spread past 1
    figure = plots.curve_figure(summary, "test_accuracy", "test accuracy", "title")
    for band in figure.axes[0].collections:
        edges = band.get_paths()[0].vertices[:, 1]
        assert edges.min() >= 0 and edges.max() <= 1
    plt.close(figure)


def test_twelve_optimizers_get_twelve_distinct_lines(runs):
    """Past ten optimizers the colours repeat; the line style and marker tell them apart."""
    summary = store.summarize(runs)
    copies = [summary.assign(optimizer=summary["optimizer"] + f" {k}") for k in range(2)]
    many = pd.concat(copies, ignore_index=True)
    many = many[many["optimizer"].isin(many["optimizer"].unique()[:12])]
    figure = plots.curve_figure(many, "test_accuracy", "test accuracy", "title")
    lines = figure.axes[0].get_lines()
    looks = {(to_rgb(line.get_color()), line.get_linestyle(), line.get_marker()) for line in lines}
    assert len(lines) == len(looks) == 12
    assert len({look[:2] for look in looks}) == 12  # colour and style alone differ too
    plt.close(figure)


def test_heatmap_numbers_contrast_with_their_cells():
    probability = pd.read_csv(SUITE / "probability_of_improvement.csv")
    figure = suite_figures.probability_figure(probability)
    axes = figure.axes[0]
    image = axes.get_images()[0]
    matrix = image.get_array()
    texts = axes.texts
    assert len(texts) == probability.shape[0]  # every ordered pair, no diagonal
    for text in texts:
        column, row = (round(v) for v in text.get_position())
        cell = plt.get_cmap("RdBu")(matrix[row, column])  # vmin 0, vmax 1
        assert float(text.get_text()) == pytest.approx(matrix[row, column], abs=0.005)
        assert wcag_contrast(text.get_color(), cell) >= 4.5, text.get_text()  # WCAG AA
    plt.close(figure)


def test_a_profile_is_drawn_as_it_is_scored():
    """The area under each drawn line, on the figure's linear tau axis, over TAU_MAX - 1, is
    the optimizer's profile score (the score a reader sees in the legend)."""
    ratios = pd.read_csv(SUITE / "performance_ratios.csv")
    table = ratios[ratios["measure"] == "steps"].pivot(
        index="workload", columns="optimizer", values="ratio"
    )
    table.iloc[0, 0] = 1.7  # a step inside the axis, between grid points
    scores = profiles.score(table)
    rho = profiles.profile(table)
    figure = suite_figures.profile_figure(rho, "steps", len(table), scores)
    axes = figure.axes[0]
    assert axes.get_xscale() == "linear"
    groups = suite_figures.shared_profiles(rho)
    for line, names in zip(axes.get_lines(), groups, strict=True):
        x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        assert line.get_drawstyle() == "steps-post"
        area = np.sum(y[:-1] * np.diff(x)) / (profiles.TAU_MAX - 1)
        assert area == pytest.approx(scores[names[0]], abs=1e-12), names
    plt.close(figure)


def test_identical_profiles_share_one_line_that_names_them_all():
    ratios = pd.read_csv(SUITE / "performance_ratios.csv")
    table = ratios[ratios["measure"] == "steps"].pivot(
        index="workload", columns="optimizer", values="ratio"
    )
    rho = profiles.profile(table)
    figure = suite_figures.profile_figure(rho, "steps", len(table))
    axes = figure.axes[0]
    lines = axes.get_lines()
    distinct = {tuple(rho[name]) for name in rho.columns}
    assert len(lines) == len(distinct) < len(rho.columns)  # the committed suite has ties
    looks = {(to_rgb(line.get_color()), line.get_linestyle(), line.get_marker()) for line in lines}
    assert len(looks) == len(lines)
    legend = " ".join(t.get_text().replace("\n", " ") for t in axes.get_legend().get_texts())
    named = [word.strip(",") for word in legend.split()]
    for name in rho.columns:
        assert named.count(name) == 1, name
    for line in lines:  # each line is the profile of every optimizer its label names
        members = [n for n in rho.columns if n in line.get_label().replace(",", " ").split()]
        assert all(tuple(rho[n]) == tuple(rho[members[0]]) for n in members)
        assert np.allclose(line.get_ydata(), rho[members[0]])
    plt.close(figure)


def test_costs_labels_neither_overlap_nor_leave_the_figure(runs):
    costs = pd.read_csv(WIZARD / "costs.csv")
    figure = plots.costs_figure(runs, costs)
    state, time = figure.axes
    assert state.get_xscale() == "linear"
    ticks = [t.get_text() for t in state.get_xticklabels()]
    assert len(ticks) > 2 and ticks[:3] == ["0", "4", "8"]  # SGD, momentum, Adam
    renderer = figure.canvas.get_renderer()
    whole = figure.get_window_extent(renderer)
    for axes in (state, time):
        boxes = [text.get_window_extent(renderer) for text in axes.texts]
        assert sorted(t.get_text() for t in axes.texts) == sorted(costs["optimizer"])
        for box in boxes:
            assert whole.contains(box.x0, box.y0) and whole.contains(box.x1, box.y1)
            assert axes.get_window_extent(renderer).contains(box.x0, box.y0)
        for first, second in itertools.combinations(boxes, 2):
            assert not first.overlaps(second)
    plt.close(figure)


def test_text_colour_is_the_one_that_contrasts_more():
    for background in ["#000000", "#67001f", "#f7f7f7", "#2166ac", "#777777", "#ffffff"]:
        chosen = figures.text_color_on(to_rgb(background))
        other = "white" if chosen == "black" else "black"
        assert wcag_contrast(chosen, background) >= wcag_contrast(other, background)
