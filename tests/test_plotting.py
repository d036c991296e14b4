"""Figures and tables of ijckd_bounds.plotting, on synthetic results tables.

The synthetic tables follow THEORY.md's relations (coupled bound = teacher error +
disagreement, transfer gap within ±δ, ...) so the figures look like real ones; the tests
read back what was drawn (line data, bar heights, image arrays) and compare it with the
table, and check the files written.
"""

import logging
import subprocess
import sys
import zlib

import numpy as np
import pandas as pd
import pytest
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
from ijckd_bounds.plotting.figures import SMALL_SAMPLE_NOTE

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


def line_colours(ax):
    return [to_hex(line.get_color()) for line in ax.get_lines()]


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
    for ax, term in zip(fig.axes, terms):
        assert len(ax.get_lines()) == n_runs
        assert len(ax.collections) == n_runs  # one interval band per run
    ijckd = bounds_df[bounds_df["run"] == "ijckd-s0"].sort_values("epoch")
    line = next(ln for ln in fig.axes[0].get_lines()
                if to_hex(ln.get_color()) == METHOD_COLOURS["ijckd"])
    np.testing.assert_allclose(line.get_xdata(), ijckd["epoch"])
    np.testing.assert_allclose(line.get_ydata(), ijckd["student_err"] * 100)  # percent
    mmd_line = fig.axes[2].get_lines()[0]
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
    assert "(estimate)" in schema.LABELS["bound_ben_david"]
    ijckd_ax = next(ax for ax in fig.axes if ax.get_title(loc="left") == "IJCKD")
    styles = {to_hex(ln.get_color()): ln.get_linestyle() for ln in ijckd_ax.get_lines()}
    assert styles["#882255"] == "--"  # Ben-David estimate
    assert styles["#332288"] == "-"  # coupled bound, exact
    rows = bounds_df[bounds_df["run"] == "ijckd-s0"].sort_values("epoch")
    student = [ln for ln in ijckd_ax.get_lines() if ln.get_linewidth() == 1.6]
    assert len(student) == 1
    np.testing.assert_allclose(student[0].get_ydata(), rows["student_err"] * 100)
    # the exact coupled bound lies on or above the student's error everywhere
    coupled = next(ln for ln in ijckd_ax.get_lines() if to_hex(ln.get_color()) == "#332288")
    assert np.all(coupled.get_ydata() >= student[0].get_ydata())
    single = plot_bounds(bounds_df, method="kd")
    assert len(single.axes) == 1 and single.axes[0].get_title(loc="left") == "KD (3 seeds)"
    # the Markov bounds exceed 100% early on: the panel says they run off scale
    assert "cut at 100%" in _notes(single.axes[0])
    assert single.axes[0].get_ylim()[1] <= 100


def test_plot_decomposition_draws_the_transfer_gap_within_disagreement(bounds_df):
    fig = plot_decomposition(bounds_df, method="ijckd")
    ax = fig.axes[0]
    rows = bounds_df[bounds_df["run"] == "ijckd-s0"].sort_values("epoch")
    by_colour = {to_hex(ln.get_color()): ln for ln in ax.get_lines() if len(ln.get_xdata()) > 2}
    gap = by_colour["#cc6677"].get_ydata()
    np.testing.assert_allclose(gap, (rows["student_err"] - rows["teacher_err"]) * 100)
    np.testing.assert_allclose(by_colour["#332288"].get_ydata(), rows["disagreement"] * 100)
    assert np.all(np.abs(gap) <= by_colour["#332288"].get_ydata())
    assert len(plot_decomposition(bounds_df).axes) == bounds_df["method"].nunique()


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
    assert "epoch 20" in fig.get_suptitle()
    early = plot_margins(margins, run="kd-s0", epoch=0)
    assert "epoch 0" in early.get_suptitle()
    with pytest.raises(IJCKDError, match="pass run="):
        plot_margins(margins)
    with pytest.raises(IJCKDError, match="epochs present: 0, 20"):
        plot_margins(margins, run="kd-s0", epoch=7)


def test_plot_per_class_heatmap_holds_the_table_in_percent():
    per_class = synthetic_per_class()
    ax = plot_per_class(per_class, "ijckd")
    image = ax.images[0].get_array()
    rows = per_class[per_class["method"] == "ijckd"]
    expected = rows.pivot(index="class", columns="epoch", values="disagreement") * 100
    np.testing.assert_allclose(np.asarray(image), expected.to_numpy())
    assert image.shape == (10, 6)  # classes x epochs
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "class"
    two_seeds = pd.concat([per_class, per_class.assign(run="ijckd-s1")])
    with pytest.raises(IJCKDError, match="pass run="):
        plot_per_class(two_seeds, "ijckd")
    assert plot_per_class(two_seeds, "ijckd", run="ijckd-s1").images


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
    assert dict(zip(table["run"], table["epoch"])) == {"kd-s0": "20", "kd-s1": "6"}


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


@pytest.mark.slow
def test_make_all_figures_writes_every_figure_and_skips_empty_tables(tmp_path, caplog):
    bounds = synthetic_bounds(methods=("kd", "ijckd"), epochs=(0, 5, 10))
    per_class = synthetic_per_class(methods=("ijckd",))
    margins = synthetic_margins(methods=("kd",), n=300)
    paths = make_all_figures(bounds, per_class, margins, tmp_path)
    names = sorted(p.name for p in paths)
    assert len(names) == 6 * 2 + 2
    for stem in ("terms", "bounds", "decomposition", "final_comparison",
                 "per_class_ijckd-s0", "margins_kd-s0"):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names
    assert "final_table.md" in names and "final_table.tex" in names
    assert all(p.stat().st_size > 0 for p in paths)
    with caplog.at_level(logging.INFO, logger="ijckd_bounds.plotting.output"):
        only_bounds = make_all_figures(bounds, per_class.iloc[:0], None, tmp_path / "b")
    assert len(only_bounds) == 10  # 4 figures x 2 formats + 2 tables
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
