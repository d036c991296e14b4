"""Figures and tables of ijckd_bounds.plotting, on synthetic results tables.

The synthetic tables follow docs/theory.md's relations (coupled bound = teacher error +
disagreement, transfer gap within ±δ, ...) so the figures look like real ones; the tests
read back what was drawn (line data, bar heights, image arrays) and compare it with the
table, and check the files written.
"""

import logging
import subprocess
import sys
import time
import zlib

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex

from ijckd_bounds import schema
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.plotting import (
    METHOD_COLOURS,
    final_table,
    make_all_figures,
    method_palette,
    plot_bounds,
    plot_decomposition,
    plot_final_comparison,
    plot_margins,
    plot_per_class,
    plot_terms,
    save_figure,
    to_latex,
    to_markdown,
)
from ijckd_bounds.plotting.figures import (
    INTERVAL_BAND_LABEL,
    OFF_SCALE_LABEL,
    SMALL_SAMPLE_NOTE,
)
from ijckd_bounds.plotting.style import (
    BOUND_STYLES,
    DECOMPOSITION_STYLES,
    STUDENT_UNDER_BOUNDS_STYLE,
    contrast_on_white,
    darker,
)

# final student error, teacher-space distance scale, has its own head
METHODS = {"ce": (0.20, 1.6, True), "kd": (0.15, 1.3, True), "fitnet": (0.14, 1.1, True),
           "srrl": (0.12, 0.9, True), "simkd": (0.11, 0.7, False),
           "ijckd": (0.10, 0.6, False), "mynet": (0.17, 1.2, True)}
TEACHER_ERR = 0.08
N_EVAL = 2000


def _interval(p, n=N_EVAL):
    half = 1.96 * np.sqrt(np.clip(p * (1 - p), 1e-6, None) / n)
    return np.clip(p - half, 0, 1), np.clip(p + half, 0, 1)


def synthetic_bounds(methods=("ce", "kd", "simkd", "ijckd"), epochs=range(0, 21, 2),
                     seeds=None, dim=64, dataset="cifar10"):
    """A bounds table with every schema column and plausible, mutually consistent values."""
    seeds = seeds or {}
    rows = []
    for method in methods:
        final_err, scale_dist, own_head = METHODS[method]
        for seed in range(seeds.get(method, 1)):
            rng = np.random.default_rng(zlib.crc32(f"{method}-{seed}".encode()))
            for epoch in epochs:
                progress = 1 - np.exp(-epoch / 5)
                student = final_err + (0.55 - final_err) * (1 - progress)
                student += 0.004 * rng.standard_normal()
                disagreement = max(student - TEACHER_ERR, 0) + 0.02 + 0.01 * rng.random()
                row = {"run": f"{method}-s{seed}", "method": method, "dataset": dataset,
                       "seed": seed, "epoch": epoch, "step": epoch * 100, "split": "eval",
                       "checkpoint": f"{method}-s{seed}/epoch{epoch}.pt"}
                values = {
                    "teacher_err": TEACHER_ERR, "student_err": student,
                    "student_own_err": student + 0.01 if own_head else np.nan,
                    "disagreement": disagreement,
                    "delta_gamma": min(disagreement * 1.6, 1.0),
                    "feat_msd": 40 * scale_dist * (1 - 0.7 * progress),
                    "feat_rel": 0.9 * scale_dist * (1 - 0.6 * progress),
                    "feat_cka": min(0.3 + 0.6 * progress / scale_dist ** 0.5, 0.97),
                    "logit_msd": 8 * scale_dist * (1 - 0.7 * progress),
                    "mmd2": 0.05 * scale_dist * (1 - 0.8 * progress),
                    "proxy_a_linear": 1.9 - 0.8 * progress / scale_dist,
                    "proxy_a_mlp": 1.95 - 0.7 * progress / scale_dist,
                    "joint_err_T": 0.075,
                    "joint_err_S": student - 0.005 - 0.03 * progress * scale_dist,
                    "student_probe_err": student - 0.015,
                    "teacher_probe_err": TEACHER_ERR + 0.01,
                    "connected_probe_err": student - 0.01,
                }
                values["ideal_joint"] = values["joint_err_T"] + values["joint_err_S"]
                values["ijc_lambda"] = TEACHER_ERR + student
                values["ijc_gap"] = values["ijc_lambda"] - values["ideal_joint"]
                values["pair_disc"] = 0.01
                values["bound_coupled"] = TEACHER_ERR + disagreement
                values["bound_margin"] = TEACHER_ERR + values["delta_gamma"]
                values["bound_feat_markov"] = TEACHER_ERR + min(2.5 * disagreement + 0.2, 2)
                values["bound_logit_markov"] = TEACHER_ERR + min(2.0 * disagreement + 0.1, 2)
                values["bound_ideal_joint"] = (TEACHER_ERR + values["ideal_joint"]
                                               + values["pair_disc"])
                values["bound_ben_david"] = (TEACHER_ERR + 0.5 * values["proxy_a_mlp"]
                                             + values["ideal_joint"])
                # fidelity and calibration
                values.update({
                    "top1_agreement": 1.0 - disagreement - (0.01 if own_head else 0.0),
                    "pred_kl": 0.8 * scale_dist * (1 - 0.7 * progress),
                    "teacher_nll": 0.3, "student_nll": 0.3 + 1.5 * student,
                    "teacher_brier": 0.12, "student_brier": 0.12 + 0.8 * (student - TEACHER_ERR),
                    "teacher_ece": 0.02, "student_ece": 0.02 + 0.2 * (student - TEACHER_ERR),
                })
                for term, value in values.items():
                    lo, hi = _interval(value)
                    if term in ("feat_msd", "logit_msd", "mmd2", "feat_cka", "feat_rel",
                                "proxy_a_linear", "proxy_a_mlp", "ijc_gap"):
                        lo, hi = value - 0.05 * abs(value) - 0.002, value + 0.05 * abs(
                            value) + 0.002
                    row[term], row[f"{term}_lo"], row[f"{term}_hi"] = value, lo, hi
                row.update({"mmd_p": 0.001, "mmd_bandwidth": 3.0, "feat_markov_tau": 1.0,
                            "logit_markov_tau": 1.0, "n_eval": N_EVAL, "n_fit": 5000,
                            "dim": dim, "n_classes": 10, "joint_chosen": "probe",
                            "joint_probe_share": 0.9})
                rows.append(row)
    df = pd.DataFrame(rows)
    return df[list(schema.TABLE_COLUMNS)]


def synthetic_per_class(methods=("kd", "ijckd"), epochs=range(0, 21, 4), n_classes=10):
    rows = []
    rng = np.random.default_rng(0)
    hard = rng.random(n_classes)
    for method in methods:
        final_err = METHODS[method][0]
        for epoch in epochs:
            progress = 1 - np.exp(-epoch / 5)
            for k in range(n_classes):
                d = (0.05 + 0.3 * hard[k]) * (1 - progress) + final_err * hard[k] * 0.5
                s = TEACHER_ERR + d
                row = {"run": f"{method}-s0", "method": method, "epoch": epoch,
                       "checkpoint": f"{method}-s0/epoch{epoch}.pt", "class": k, "n": 200}
                for term, value in (("student_err", s), ("teacher_err", TEACHER_ERR),
                                    ("disagreement", d)):
                    lo, hi = _interval(value, 200)
                    row[term], row[f"{term}_lo"], row[f"{term}_hi"] = value, lo, hi
                rows.append(row)
    return pd.DataFrame(rows)


def synthetic_margins(methods=("kd", "ijckd"), epochs=(0, 20), n=1500):
    rows = []
    for method in methods:
        rng = np.random.default_rng(len(method))
        for epoch in epochs:
            margin = rng.gamma(2.0, 0.6, n)
            dist = rng.gamma(2.0, METHODS[method][1] * (0.35 if epoch else 1.0), n)
            # a disagreement needs dist >= margin; most crossings do flip the prediction
            disagree = (dist >= margin) & (rng.random(n) < 0.4)
            rows.append(pd.DataFrame({
                "run": f"{method}-s0", "method": method, "epoch": epoch,
                "checkpoint": f"{method}-s0/epoch{epoch}.pt", "teacher_margin": margin,
                "feat_dist": dist, "disagree": disagree, "sample": np.arange(n)}))
    return pd.concat(rows, ignore_index=True)


@pytest.fixture(scope="module")
def bounds_df():
    return synthetic_bounds(methods=("ce", "kd", "simkd", "ijckd", "mynet"), seeds={"kd": 3})


def data_lines(ax):
    """The lines that draw table values (not the edge markers of off-scale points)."""
    return [line for line in ax.get_lines() if not line.get_label().startswith("_off")]


def line_colours(ax):
    return [to_hex(line.get_color()) for line in data_lines(ax)]


# ----------------------------------------------------------------------------- imports


def test_importing_plotting_loads_no_torch_and_no_estimators():
    code = ("import sys, ijckd_bounds.plotting; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.') or "
            "m.startswith(('ijckd_bounds.estimators', 'ijckd_bounds.train', "
            "'ijckd_bounds.tracking'))]; print(repr(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ------------------------------------------------------------------------------ colours


def test_built_in_methods_keep_their_colour_and_unknown_ones_are_stable():
    alone = method_palette(["ijckd"])
    crowd = method_palette(["ce", "kd", "fitnet", "srrl", "simkd", "ijckd", "teacher"])
    assert alone["ijckd"] == crowd["ijckd"] == METHOD_COLOURS["ijckd"]
    assert crowd["teacher"] == "#000000"
    assert len(set(crowd.values())) == len(crowd)  # all distinct
    # an unknown method's colour does not depend on which other methods are plotted
    assert method_palette(["zeta"])["zeta"] == method_palette(["kd", "zeta", "ce"])["zeta"]
    many = method_palette([f"user{i}" for i in range(8)] + list(METHOD_COLOURS))
    assert len(set(many.values())) == len(many)
    assert not set(many[f"user{i}"] for i in range(8)) & set(METHOD_COLOURS.values())


def test_line_colours_are_the_method_colours_in_every_figure(bounds_df):
    palette = method_palette(bounds_df["method"].unique())
    first = plot_terms(bounds_df, terms=("student_err",))
    only_two = plot_terms(bounds_df[bounds_df["method"].isin(["ijckd", "mynet"])],
                          terms=("student_err",))
    assert set(line_colours(first.axes[0])) == set(palette.values())
    assert set(line_colours(only_two.axes[0])) == {palette["ijckd"], palette["mynet"]}


# ---------------------------------------------------------------------------- figures


def test_plot_terms_draws_one_line_per_run_with_the_table_values(bounds_df):
    terms = ("student_err", "feat_cka", "mmd2", "ijc_gap")
    fig = plot_terms(bounds_df, terms=terms, ncols=2)
    assert len(fig.axes) == len(terms)
    n_runs = bounds_df["run"].nunique()
    for ax in fig.axes:
        assert len(data_lines(ax)) == n_runs
        assert len(ax.collections) == n_runs  # one interval band per run
    ijckd = bounds_df[bounds_df["run"] == "ijckd-s0"].sort_values("epoch")
    line = next(ln for ln in data_lines(fig.axes[0])
                if to_hex(ln.get_color()) == METHOD_COLOURS["ijckd"])
    np.testing.assert_allclose(line.get_xdata(), ijckd["epoch"])
    np.testing.assert_allclose(line.get_ydata(), ijckd["student_err"] * 100)  # percent
    mmd_line = data_lines(fig.axes[2])[0]
    assert np.nanmax(mmd_line.get_ydata()) < 1  # not a rate: drawn on its own scale
    assert fig.axes[0].get_ylabel() == "error rate (%)"
    assert fig.axes[-1].get_xlabel() == "epoch"
    legend_text = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend_text[:2] == ["CE", "KD (3 seeds)"] and "mynet" in legend_text


def _notes(ax):
    return [t.get_text() for t in ax.texts]


def test_discrepancy_panels_are_flagged_when_n_is_below_ten_times_d():
    terms = ("student_err", "mmd2", "feat_cka", "proxy_a_mlp")
    wide = plot_terms(synthetic_bounds(dim=512), terms=terms)  # 2000 < 5120
    narrow = plot_terms(synthetic_bounds(dim=64), terms=terms)  # 2000 >= 640
    assert [SMALL_SAMPLE_NOTE in _notes(ax) for ax in wide.axes] == [False, True, True, True]
    assert not any(SMALL_SAMPLE_NOTE in _notes(ax) for ax in narrow.axes)


def test_plot_bounds_one_panel_per_method_with_the_estimate_dashed(bounds_df):
    fig = plot_bounds(bounds_df)
    assert len(fig.axes) == bounds_df["method"].nunique()
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert schema.LABELS["bound_ben_david"] in legend
    # in the legend, the estimate (and only it) is drawn dashed, the exact bounds solid
    legend_styles = {t.get_text(): h.get_linestyle()
                     for t, h in zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles,
                                     strict=True)}
    bound_labels = [schema.LABELS[b] for b in schema.BOUNDS]
    assert set(bound_labels) <= set(legend_styles)
    assert [legend_styles[label] for label in bound_labels] == [
        "--" if "(estimate)" in label else "-" for label in bound_labels]
    assert "--" in legend_styles.values()
    ijckd_ax = next(ax for ax in fig.axes if ax.get_title(loc="left") == "IJCKD")
    styles = {to_hex(ln.get_color()): ln.get_linestyle() for ln in data_lines(ijckd_ax)}
    assert styles["#882255"] == "--"  # Ben-David estimate
    assert styles["#332288"] == "-"  # coupled bound, exact
    rows = bounds_df[bounds_df["run"] == "ijckd-s0"].sort_values("epoch")
    student = _student_line(ijckd_ax)
    np.testing.assert_allclose(student.get_ydata(), rows["student_err"] * 100)
    # every bound is drawn at the table's values, in percent
    for bound in schema.BOUNDS:
        np.testing.assert_allclose(_bound_line(ijckd_ax, bound).get_ydata(), rows[bound] * 100,
                                   err_msg=bound)
    single = plot_bounds(bounds_df, method="kd")
    assert len(single.axes) == 1 and single.axes[0].get_title(loc="left") == "KD (3 seeds)"
    # the Markov bounds exceed 100%: the panel says they run off scale
    assert "▲ above 100%" in _notes(single.axes[0])
    assert single.axes[0].get_ylim()[1] <= 100


def _student_line(ax):
    lines = [ln for ln in data_lines(ax)
             if to_hex(ln.get_color()) == STUDENT_UNDER_BOUNDS_STYLE["color"]]
    assert len(lines) == 1
    return lines[0]


def _bound_line(ax, bound):
    colour = BOUND_STYLES[bound]["color"]
    return next(ln for ln in data_lines(ax) if to_hex(ln.get_color()) == colour)


def test_the_coupled_bound_is_drawn_on_top_of_the_student_error(bounds_df):
    """The coupled bound often equals the student's error: drawn under the student's line
    it disappeared. It must lie above in drawing order and the student's line must show
    around it (wider, and of another colour)."""
    ax = plot_bounds(bounds_df, method="ijckd").axes[0]
    student, coupled = _student_line(ax), _bound_line(ax, "bound_coupled")
    assert coupled.get_zorder() > student.get_zorder()
    assert student.get_linewidth() > 2 * coupled.get_linewidth()
    assert to_hex(student.get_color()) != to_hex(coupled.get_color())


def _above_markers(ax):
    return {to_hex(ln.get_color()): ln for ln in ax.get_lines()
            if ln.get_label() == "_off_scale_above"}


def test_bounds_above_the_top_are_marked_and_named_in_the_legend(bounds_df):
    df = bounds_df.copy()
    df["bound_feat_markov"] = 1.5  # vacuous at every epoch, as on real data
    fig = plot_bounds(df, method=("kd", "ijckd"))
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert schema.LABELS["bound_feat_markov"] + ": above 100% ▲" in legend
    assert schema.LABELS["bound_coupled"] in legend  # on scale: no note
    for ax in fig.axes:
        markers = _above_markers(ax)
        feat = markers[BOUND_STYLES["bound_feat_markov"]["color"]]
        assert list(feat.get_ydata()) == [1.0]  # at the top edge, in axes coordinates
        assert not feat.get_clip_on()
        assert BOUND_STYLES["bound_coupled"]["color"] not in markers


def test_small_errors_get_room_on_the_bounds_axis():
    """Errors of a few percent beside bounds near 100%: on a linear 0-100% axis the
    student's curve took a tenth of the panel."""
    df = synthetic_bounds(methods=("ijckd",), epochs=range(10, 21, 2))
    df["bound_feat_markov"] = 1.5  # vacuous, as on real data
    ax = plot_bounds(df).axes[0]
    student = _student_line(ax).get_ydata()
    assert student.max() < 20 and ax.get_ylim()[1] == 100  # a vacuous bound sets the top
    bottom, top = ax.transAxes.transform([(0, 0), (0, 1)])[:, 1]
    highest = ax.transData.transform([(0, student.max())])[0, 1]
    assert (highest - bottom) / (top - bottom) > 0.3
    lowest = ax.transData.transform([(0, 100 * df["teacher_err"].min())])[0, 1]
    assert lowest > bottom  # the teacher's error is inside the panel, above its bottom
    assert ax.get_yscale() == "symlog"


def test_plot_terms_takes_its_y_range_from_the_later_epochs():
    df = synthetic_bounds(methods=("kd", "ijckd"), epochs=range(0, 21))
    fig = plot_terms(df, terms=("student_err", "feat_cka"), ncols=2)
    ax = fig.axes[0]
    first = 100 * df.loc[df["epoch"] == 0, "student_err"].max()
    later = df[df["epoch"] >= 5]
    bottom, top = ax.get_ylim()
    assert top < 0.65 * first  # epoch 0 no longer sets the range
    assert bottom <= 100 * later["student_err_lo"].min()
    assert top >= 100 * later["student_err_hi"].max()
    # the values left outside are marked at the top edge, in their method's colour
    marks = [ln for ln in ax.get_lines() if ln.get_label() == "_off_scale"]
    assert {to_hex(ln.get_color()) for ln in marks} == {METHOD_COLOURS["kd"],
                                                          METHOD_COLOURS["ijckd"]}
    assert all(np.allclose(ln.get_ydata(), top) for ln in marks)
    assert all(ln.get_xdata().max() < 5 for ln in marks)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert OFF_SCALE_LABEL in legend
    # a panel whose first epochs are not far off keeps every value in range
    flat = df.assign(student_err=0.1, student_err_lo=0.09, student_err_hi=0.11)
    flat_fig = plot_terms(flat, terms=("student_err",))
    assert not [ln for ln in flat_fig.axes[0].get_lines() if ln.get_label() == "_off_scale"]
    assert OFF_SCALE_LABEL not in [t.get_text() for t in flat_fig.legends[0].get_texts()]


def test_plot_decomposition_draws_the_transfer_gap_within_disagreement(bounds_df):
    fig = plot_decomposition(bounds_df, method="ijckd")
    ax = fig.axes[0]
    rows = bounds_df[bounds_df["run"] == "ijckd-s0"].sort_values("epoch")
    by_colour = {to_hex(ln.get_color()): ln for ln in ax.get_lines() if len(ln.get_xdata()) > 2}
    gap = by_colour["#cc6677"].get_ydata()
    np.testing.assert_allclose(gap, (rows["student_err"] - rows["teacher_err"]) * 100)
    np.testing.assert_allclose(by_colour["#332288"].get_ydata(), rows["disagreement"] * 100)
    # δ, teacher_err and ijc_gap are drawn with their interval; the gap, which the table
    # gives no interval for, without one
    bands = {to_hex(band.get_facecolor()[0]): band for band in ax.collections}
    assert set(bands) == {DECOMPOSITION_STYLES[t]["color"]
                          for t in ("teacher_err", "disagreement", "ijc_gap")}
    band_y = bands["#332288"].get_paths()[0].vertices[:, 1]
    for edge in ("disagreement_lo", "disagreement_hi"):
        assert all(np.isclose(band_y, 100 * v).any() for v in rows[edge]), edge
    assert band_y.min() >= 100 * rows["disagreement_lo"].min() - 1e-9
    assert band_y.max() <= 100 * rows["disagreement_hi"].max() + 1e-9
    assert len(plot_decomposition(bounds_df).axes) == bounds_df["method"].nunique()


def test_decomposition_panels_share_one_y_range_and_name_the_band(bounds_df):
    fig = plot_decomposition(bounds_df)
    limits = {ax.get_ylim() for ax in fig.axes}
    assert len(limits) == 1  # one range for every method
    (bottom, top), = limits
    gap = 100 * (bounds_df["student_err"] - bounds_df["teacher_err"])
    assert bottom <= gap.min() and top >= 100 * bounds_df["disagreement_hi"].max()
    legend = fig.legends[0]
    texts = [t.get_text() for t in legend.get_texts()]
    assert INTERVAL_BAND_LABEL in texts
    band = legend.legend_handles[texts.index(INTERVAL_BAND_LABEL)]
    # the legend's swatch looks like the teacher's band: same colour, same alpha
    teacher_band = fig.axes[0].collections[0]
    assert to_hex(band.get_facecolor()) == to_hex(teacher_band.get_facecolor()[0])
    assert band.get_alpha() == pytest.approx(teacher_band.get_alpha())
    for ax in fig.axes:
        assert "percent" not in ax.get_ylabel() and "%" in ax.get_ylabel()


def test_plot_margins_marks_the_disagreeing_samples():
    margins = synthetic_margins()
    fig = plot_margins(margins, run="kd-s0")
    ax_cdf, ax_pts = fig.axes
    chosen = margins[(margins["run"] == "kd-s0") & (margins["epoch"] == 20)]
    agree, disagree = ax_pts.collections[-2:]
    assert len(disagree.get_offsets()) == chosen["disagree"].sum()
    assert len(agree.get_offsets()) == (~chosen["disagree"]).sum()
    # a disagreement needs feat_dist >= teacher_margin: every marked point is above y = x
    offsets = np.asarray(disagree.get_offsets())
    assert np.all(offsets[:, 1] >= offsets[:, 0])
    assert ax_pts.get_xlim() == ax_pts.get_ylim()  # shared scale: y = x is the diagonal
    cdf = ax_cdf.get_lines()[0]
    np.testing.assert_allclose(cdf.get_xdata(), np.sort(chosen["teacher_margin"]))
    assert fig.get_suptitle() == "KD: kd-s0, epoch 20 (1500 samples)"
    early = plot_margins(margins, run="kd-s0", epoch=0)
    assert "epoch 0" in early.get_suptitle()
    undated = plot_margins(margins[margins["epoch"] == 20].assign(epoch=np.nan), run="kd-s0")
    assert undated.get_suptitle() == "KD: kd-s0 (1500 samples)"
    with pytest.raises(IJCKDError, match="pass run="):
        plot_margins(margins)
    with pytest.raises(IJCKDError, match="epochs present: 0, 20"):
        plot_margins(margins, run="kd-s0", epoch=7)


@pytest.mark.parametrize("method", sorted(METHOD_COLOURS) + ["user_method"])
def test_margin_points_stand_out_on_white_whatever_the_method_colour(method):
    """KD's orange (and a user's yellow) points at alpha 0.35 were nearly invisible."""
    margins = synthetic_margins(methods=("kd",), n=300).assign(method=method)
    palette = {method: "#f0e442"} if method == "user_method" else None
    agree = plot_margins(margins, palette=palette).axes[1].collections[-2]
    assert agree.get_alpha() >= 0.6
    edge = to_hex(agree.get_edgecolor()[0][:3])
    assert contrast_on_white(edge) >= 3.0  # WCAG's minimum for graphics
    assert contrast_on_white("#f0e442") < 1.5 < contrast_on_white(darker("#f0e442"))


def test_plot_per_class_heatmap_holds_the_table_in_percent():
    per_class = synthetic_per_class()
    ax = plot_per_class(per_class, "ijckd")
    image = ax.images[0].get_array()
    rows = per_class[per_class["method"] == "ijckd"]
    expected = rows.pivot(index="class", columns="epoch", values="disagreement") * 100
    np.testing.assert_allclose(np.asarray(image), expected.to_numpy())
    assert image.shape == (10, 6)  # classes x epochs
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel().startswith("class")
    two_seeds = pd.concat([per_class, per_class.assign(run="ijckd-s1")])
    with pytest.raises(IJCKDError, match="pass run="):
        plot_per_class(two_seeds, "ijckd")
    assert plot_per_class(two_seeds, "ijckd", run="ijckd-s1").images


def test_per_class_heatmaps_of_one_table_share_one_colour_scale():
    per_class = synthetic_per_class()
    kd, ijckd = (plot_per_class(per_class, m).images[0] for m in ("kd", "ijckd"))
    assert kd.get_clim() == ijckd.get_clim()
    assert kd.get_clim()[1] == pytest.approx(100 * per_class["disagreement"].max())
    own = per_class[per_class["method"] == "ijckd"]["disagreement"].max()
    assert own < per_class["disagreement"].max()  # ijckd alone would have set a lower top
    assert plot_per_class(per_class, "kd", vmax=50).images[0].get_clim() == (0.0, 50.0)


def test_per_class_figure_shows_n_and_the_last_epochs_intervals():
    per_class = synthetic_per_class()
    per_class["n"] = 150 + per_class["class"]
    ax = plot_per_class(per_class, "kd")
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "0 (n=150)" and labels[3] == "3 (n=153)"
    side = ax.per_class_intervals
    last = per_class[(per_class["method"] == "kd") & (per_class["epoch"] == 20)]
    last = last.sort_values("class")
    segments = side.collections[0].get_segments()
    lo = [segment[0][0] for segment in segments]
    hi = [segment[1][0] for segment in segments]
    np.testing.assert_allclose(lo, 100 * last["disagreement_lo"])
    np.testing.assert_allclose(hi, 100 * last["disagreement_hi"])
    np.testing.assert_allclose(side.get_lines()[0].get_xdata(), 100 * last["disagreement"])
    assert "20" in side.get_xlabel()


def test_plot_final_comparison_bars_are_the_last_checkpoint(bounds_df):
    ax = plot_final_comparison(bounds_df)
    final = bounds_df[bounds_df["epoch"] == bounds_df["epoch"].max()]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    expected = np.concatenate([final["student_err"], final["student_own_err"].dropna()])
    assert heights == sorted(np.round(expected * 100, 6))
    # simkd and ijckd predict with the teacher's classifier: no own-head bar
    assert len(ax.patches) == len(final) + final["student_own_err"].notna().sum()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["CE", "KD\n(3 seeds)", "SimKD", "IJCKD", "mynet"]
    assert ax.get_ylabel() == "error rate (%)"


def _rendered(ax):
    renderer = FigureCanvasAgg(ax.figure).get_renderer()
    ax.figure.draw(renderer)
    return renderer


def test_final_comparison_legend_title_teacher_interval_and_seed_count(bounds_df):
    ax = plot_final_comparison(bounds_df)
    renderer = _rendered(ax)
    legend = ax.get_legend().get_window_extent(renderer)
    frame = ax.get_window_extent(renderer)
    assert legend.x0 >= frame.x0 - 1 and legend.x1 <= frame.x1 + 1  # no wider than the plot
    assert ax.get_title(loc="left") == "cifar10"
    # a grey band per run from the teacher's lo to hi
    final = bounds_df[bounds_df["epoch"] == bounds_df["epoch"].max()]
    bands = [c for c in ax.collections if c.get_label() == "_teacher_interval"]
    assert len(bands) == len(final)
    spans = sorted((round(b.get_paths()[0].vertices[:, 1].min(), 6),
                    round(b.get_paths()[0].vertices[:, 1].max(), 6)) for b in bands)
    expected = sorted(zip(np.round(100 * final["teacher_err_lo"], 6),
                          np.round(100 * final["teacher_err_hi"], 6), strict=True))
    assert spans == expected
    # two runs of one seed are not two seeds
    same_seed = pd.concat([bounds_df[bounds_df["run"] == "ijckd-s0"],
                           bounds_df[bounds_df["run"] == "ijckd-s0"].assign(run="ijckd-again")])
    labels = [t.get_text() for t in plot_final_comparison(same_seed).get_xticklabels()]
    assert labels == ["IJCKD\n(2 runs, 1 seed)"]


def test_a_model_audited_once_without_epochs_still_gets_its_final_bars(tmp_path, caplog):
    once = synthetic_bounds(methods=("mynet",), epochs=(0,)).assign(epoch=np.nan, step=np.nan)
    ax = plot_final_comparison(once)
    assert len(ax.patches) == 2  # h_T and own head
    with pytest.raises(IJCKDError, match="no rows with an epoch"):
        plot_terms(once)
    with caplog.at_level(logging.INFO, logger="ijckd_bounds.plotting.output"):
        paths = make_all_figures(once, None, None, tmp_path)
    assert sorted(p.name for p in paths) == ["final_comparison.pdf", "final_comparison.png",
                                             "final_table.md", "final_table.tex"]
    assert "no row has an epoch" in caplog.text


def test_tables_read_back_from_csv_plot_the_same(tmp_path):
    margins = synthetic_margins(methods=("kd",), n=200)
    margins.to_csv(tmp_path / "margins.csv", index=False)
    again = pd.read_csv(tmp_path / "margins.csv").astype({"disagree": str})
    disagree = plot_margins(again).axes[1].collections[-1]
    assert len(disagree.get_offsets()) == margins.loc[margins["epoch"] == 20, "disagree"].sum()
    with pytest.raises(IJCKDError, match="must be boolean"):
        plot_margins(again.assign(disagree="maybe"))


# ----------------------------------------------------------------------------- tables


def test_final_table_formats_intervals_in_percent():
    df = synthetic_bounds(methods=("kd", "simkd"), epochs=(0, 10))
    final = df["epoch"] == 10
    df.loc[final & (df["method"] == "kd"), ["student_err", "student_err_lo",
                                            "student_err_hi"]] = [0.123, 0.110, 0.135]
    df.loc[final & (df["method"] == "kd"), ["feat_cka", "feat_cka_lo",
                                            "feat_cka_hi"]] = [0.8123, 0.8011, 0.8234]
    table = final_table(df)
    assert list(table["method"]) == ["KD", "SimKD"]
    assert list(table["epoch"]) == ["10", "10"]
    assert table.loc[0, "student_err"] == "12.3 [11.0, 13.5]"
    assert table.loc[0, "feat_cka"] == "0.812 [0.801, 0.823]"
    assert table.loc[1, "student_own_err"] == "–"  # SimKD has no own head
    markdown = to_markdown(table)
    lines = markdown.strip().splitlines()
    assert len(lines) == 2 + len(table)
    assert "| student_err (%) |" in lines[0] and "| feat_cka |" in lines[0]
    assert "12.3 [11.0, 13.5]" in lines[2]
    latex = to_latex(table, caption="Final checkpoint, 95% intervals")
    assert "12.3 [11.0, 13.5]" in latex and r"\toprule" in latex
    assert r"kd-s0" in latex and r"95\% intervals" in latex
    assert r"student error $\epsilon_S(h_T)$ (\%)" in latex
    assert "–" not in latex and "--" in latex  # the en dash is written the LaTeX way
    underscored = to_latex(table.assign(run="kd_run_1"))
    assert r"kd\_run\_1" in underscored


def test_final_table_picks_the_last_epoch_of_each_run_even_when_runs_end_early():
    df = synthetic_bounds(methods=("kd",), seeds={"kd": 2})
    df = df[~((df["run"] == "kd-s1") & (df["epoch"] > 6))]
    table = final_table(df, terms=("student_err",))
    assert dict(zip(table["run"], table["epoch"], strict=True)) == {"kd-s0": "20", "kd-s1": "6"}


# ------------------------------------------------------------------------------ files


def test_save_figure_writes_png_and_pdf_atomically(tmp_path, bounds_df):
    fig = plot_final_comparison(bounds_df).figure
    paths = save_figure(fig, tmp_path / "sub" / "final.png")  # suffix is dropped
    assert [p.name for p in paths] == ["final.png", "final.pdf"]
    png, pdf = (p.read_bytes() for p in paths)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    assert pdf.startswith(b"%PDF") and b"%%EOF" in pdf[-64:]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["final.pdf", "final.png"]
    # 200 dpi: the PNG's pHYs chunk holds pixels per metre
    phys = png.index(b"pHYs")
    assert round(int.from_bytes(png[phys + 4:phys + 8], "big") * 0.0254) == 200
    with pytest.raises(IJCKDError, match="format"):
        save_figure(fig, tmp_path / "x", formats=("jpg",))


def test_a_figure_saved_twice_is_the_same_file(tmp_path, bounds_df):
    # no creation date or other run-dependent bytes: a regenerated figure is unchanged
    fig = plot_final_comparison(bounds_df).figure
    first = [p.read_bytes() for p in save_figure(fig, tmp_path / "a")]
    time.sleep(1.1)  # PDF dates have a resolution of one second
    second = [p.read_bytes() for p in save_figure(fig, tmp_path / "b")]
    assert first == second


@pytest.mark.slow
def test_make_all_figures_writes_every_figure_and_skips_empty_tables(tmp_path, caplog):
    bounds = synthetic_bounds(methods=("kd", "ijckd"), epochs=(0, 5, 10))
    per_class = synthetic_per_class(methods=("ijckd",))
    margins = synthetic_margins(methods=("kd",), n=300)
    paths = make_all_figures(bounds, per_class, margins, tmp_path)
    names = sorted(p.name for p in paths)
    assert len(names) == 7 * 2 + 2
    for stem in ("terms", "bounds", "decomposition", "final_comparison", "fidelity",
                 "per_class_ijckd-s0", "margins_kd-s0"):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names
    assert "final_table.md" in names and "final_table.tex" in names
    assert all(p.stat().st_size > 0 for p in paths)
    with caplog.at_level(logging.INFO, logger="ijckd_bounds.plotting.output"):
        only_bounds = make_all_figures(bounds, per_class.iloc[:0], None, tmp_path / "b")
    assert len(only_bounds) == 12  # 5 figures x 2 formats + 2 tables
    assert "per_class table is empty" in caplog.text
    assert "no margins table was given" in caplog.text


# ------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_one_readable_line(bounds_df):
    with pytest.raises(IJCKDError, match="did you mean 'feat_cka'"):
        plot_terms(bounds_df, terms=("feat_ckaa",))
    with pytest.raises(IJCKDError, match="lacks column 'disagreement'"):
        plot_decomposition(bounds_df.drop(columns=["disagreement"]))
    two = pd.concat([bounds_df, bounds_df.assign(dataset="mnist1d")])
    with pytest.raises(IJCKDError, match="pass dataset="):
        plot_terms(two)
    assert plot_terms(two, dataset="mnist1d", terms=("student_err",)).axes
    with pytest.raises(IJCKDError, match="is empty"):
        plot_final_comparison(bounds_df.iloc[:0])
    with pytest.raises(IJCKDError, match="method 'dino' is not in the table"):
        plot_bounds(bounds_df, method="dino")
    with pytest.raises(IJCKDError, match="must be a pandas DataFrame"):
        plot_terms(bounds_df.to_dict())


# ------------------------------------------------------------- fidelity and calibration


def synthetic_calibration(methods=("kd", "ijckd"), epochs=(5, 10), n_bins=15, n=2000):
    """Reliability bins: a calibrated teacher and an over-confident student."""
    rows = []
    edges = np.linspace(0, 1, n_bins + 1)
    for method in methods:
        for epoch in epochs:
            for model, shift in (("teacher", 0.0), ("student", 0.06 * epoch / 10)):
                weights = np.exp(4 * edges[1:])
                counts = np.floor(n * weights / weights.sum()).astype(int)
                counts[: n_bins // 3] = 0  # confidences below 1/K do not occur
                for b in range(n_bins):
                    conf = (edges[b] + edges[b + 1]) / 2
                    acc = max(conf - shift, 0.0)
                    rows.append({"run": f"{method}-s0", "method": method, "epoch": epoch,
                                 "checkpoint": f"epoch_{epoch:04d}.pt", "split": "eval",
                                 "model": model, "bin": b, "bin_lo": edges[b],
                                 "bin_hi": edges[b + 1], "n": counts[b],
                                 "confidence": conf if counts[b] else np.nan,
                                 "accuracy": acc if counts[b] else np.nan})
    return pd.DataFrame(rows)


def test_plot_fidelity_draws_the_tables_agreement_kl_and_ece():
    from ijckd_bounds.plotting import FIDELITY_CURVES, plot_fidelity

    df = synthetic_bounds(methods=("kd", "ijckd"), epochs=(0, 5, 10))
    fig = plot_fidelity(df)
    assert len(fig.axes) == len(FIDELITY_CURVES) == 3
    for ax, term in zip(fig.axes, FIDELITY_CURVES, strict=True):
        assert ax.get_title(loc="left") == schema.LABELS[term]
        factor = 100.0 if term != "pred_kl" else 1.0
        lines = [line.get_ydata() for line in ax.get_lines()]
        for run in ("kd-s0", "ijckd-s0"):
            want = df.loc[df["run"] == run, term].to_numpy() * factor
            assert any(np.allclose(y, want) for y in lines), (term, run)
    assert fig.axes[0].get_ylabel() == "agreement (%)"
    assert fig.axes[1].get_ylabel() == "nats"


def test_plot_reliability_draws_teacher_beside_student_with_bin_counts():
    from ijckd_bounds.plotting import plot_reliability

    calibration = synthetic_calibration()
    fig = plot_reliability(calibration, run="kd-s0")
    top_teacher, counts_teacher, top_student, counts_student = fig.axes
    last = calibration[(calibration["run"] == "kd-s0") & (calibration["epoch"] == 10)]
    for model, top, counts in (("teacher", top_teacher, counts_teacher),
                               ("student", top_student, counts_student)):
        mine = last[(last["model"] == model) & (last["n"] > 0)].sort_values("bin")
        bars = top.containers[0]
        assert np.allclose([b.get_height() for b in bars], mine["accuracy"])
        gaps = top.containers[1]
        assert np.allclose([g.get_height() for g in gaps],
                           (mine["confidence"] - mine["accuracy"]).abs())
        # each gap spans from the bin's accuracy to its confidence
        assert np.allclose([g.get_y() for g in gaps],
                           np.minimum(mine["confidence"], mine["accuracy"]))
        centres = [b.get_x() + b.get_width() / 2 for b in bars]
        assert np.allclose(centres, (mine["bin_lo"] + mine["bin_hi"]) / 2)
        assert np.allclose([b.get_height() for b in counts.containers[0]], mine["n"])
        assert counts.get_yscale() == "log"
        assert f"{int(mine['n'].sum())} samples" in top.get_title(loc="left")
    assert "student (KD)" in top_student.get_title(loc="left")
    assert "epoch 10" in fig._suptitle.get_text()
    # as drawn, the student's bars sit under the diagonal y = x (over-confident), the
    # teacher's reach it
    for bars, below in ((top_student.containers[0], True), (top_teacher.containers[0], False)):
        heights = np.array([b.get_height() for b in bars])
        centres = np.array([b.get_x() + b.get_width() / 2 for b in bars])
        assert np.all(heights < centres) if below else np.allclose(heights, centres)
    earlier = plot_reliability(calibration, run="kd-s0", epoch=5)
    first = calibration[(calibration["run"] == "kd-s0") & (calibration["epoch"] == 5)
                        & (calibration["model"] == "student") & (calibration["n"] > 0)]
    assert np.allclose([b.get_height() for b in earlier.axes[2].containers[0]],
                       first.sort_values("bin")["accuracy"])
    with pytest.raises(IJCKDError, match="pass run= to pick one"):
        plot_reliability(calibration)
    with pytest.raises(IJCKDError, match="no calibration bins at epoch 7"):
        plot_reliability(calibration, run="kd-s0", epoch=7)
    with pytest.raises(IJCKDError, match="no student bins"):
        plot_reliability(calibration[calibration["model"] == "teacher"], run="kd-s0")
    with pytest.raises(IJCKDError, match="lacks column 'accuracy'"):
        plot_reliability(calibration.drop(columns="accuracy"), run="kd-s0")


@pytest.mark.slow
def test_make_all_figures_adds_the_fidelity_figure_and_a_reliability_diagram_per_run(
        tmp_path):
    bounds = synthetic_bounds(methods=("kd", "ijckd"), epochs=(0, 5, 10))
    paths = make_all_figures(bounds, None, None, tmp_path,
                             calibration_df=synthetic_calibration())
    names = {p.name for p in paths}
    assert {"fidelity.png", "reliability_kd-s0.png", "reliability_ijckd-s0.png",
            "reliability_kd-s0.pdf"} <= names


def test_final_table_has_agreement_and_ece_columns():
    df = synthetic_bounds(methods=("kd", "ijckd"), epochs=(0, 10))
    table = final_table(df)
    for column in ("top1_agreement", "teacher_ece", "student_ece"):
        assert column in table.columns
    kd = df[(df["method"] == "kd") & (df["epoch"] == 10)].iloc[0]
    assert table.loc[0, "student_ece"].startswith(f"{100 * kd['student_ece']:.1f} [")
    assert "| top1_agreement (%) |" in to_markdown(table)
