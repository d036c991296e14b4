"""The results tables: schema checked on write, upserts without duplicates, a lock
that keeps two writers from losing each other's rows."""

import math
import multiprocessing as mp

import pandas as pd
import pytest

from ijckd_bounds import schema
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.tracking import table


def make_row(run="r", checkpoint="epoch_0001.pt", epoch=1, value=0.2):
    row = {c: 0.1 for c in schema.ESTIMATE_COLUMNS}
    for term in schema.INTERVAL_TERMS + schema.BOUNDS:
        row[term], row[f"{term}_lo"], row[f"{term}_hi"] = value, value - 0.05, value + 0.05
    row.update(run=run, method="kd", dataset="digits", seed=0, epoch=epoch, step=10 * epoch,
               split="eval", checkpoint=checkpoint, joint_chosen="teacher")
    return row


def test_upsert_replaces_rows_with_the_same_key(tmp_path):
    path = tmp_path / "bounds.csv"
    table.append_bounds(path, [make_row(epoch=1, checkpoint="epoch_0001.pt")])
    table.append_bounds(path, [make_row(epoch=2, checkpoint="epoch_0002.pt")])
    df = table.append_bounds(path, [make_row(epoch=2, checkpoint="epoch_0002.pt", value=0.3)])
    assert len(df) == 2
    assert list(df.columns) == list(schema.TABLE_COLUMNS)
    assert table.read_table(path)["student_err"].tolist() == [0.2, 0.3]


def test_schema_is_checked_on_write(tmp_path):
    row = make_row()
    del row["mmd2_lo"]
    with pytest.raises(IJCKDError, match="missing column 'mmd2_lo'"):
        table.append_bounds(tmp_path / "bounds.csv", [row])
    row = make_row()
    row["student_err_lo"] = 0.9
    with pytest.raises(IJCKDError, match="student_err = 0.2 lies outside its interval"):
        table.append_bounds(tmp_path / "bounds.csv", [row])
    assert not (tmp_path / "bounds.csv").exists()


def test_joint_chosen_is_text_and_checked(tmp_path):
    path = tmp_path / "bounds.csv"
    table.append_bounds(path, [make_row(checkpoint="a.pt")])
    df = table.append_bounds(path, [dict(make_row(checkpoint="b.pt"), joint_chosen="probe")])
    assert table.read_table(path)["joint_chosen"].tolist() == ["teacher", "probe"]
    assert len(df) == 2
    with pytest.raises(IJCKDError, match="joint_chosen must be one of teacher, probe"):
        table.append_bounds(path, [dict(make_row(checkpoint="c.pt"), joint_chosen="h_T")])


def test_nan_optional_term_is_allowed(tmp_path):
    row = make_row()
    row["student_own_err"] = row["student_own_err_lo"] = row["student_own_err_hi"] = math.nan
    df = table.append_bounds(tmp_path / "bounds.csv", [row])
    assert df["student_own_err"].isna().all()


def _writer(args):
    path, worker, count = args
    for i in range(count):
        table.append_bounds(path, [make_row(run=f"w{worker}", checkpoint=f"epoch_{i:04d}.pt",
                                            epoch=i)])


@pytest.mark.slow
def test_two_writers_do_not_lose_rows(tmp_path):
    path = str(tmp_path / "bounds.csv")
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_writer, [(path, 0, 15), (path, 1, 15)])
    df = pd.read_csv(path)
    assert len(df) == 30
    assert not df.duplicated(subset=list(table.ROW_KEY)).any()


def test_collect_concatenates_runs(tmp_path):
    for run in ("a", "b"):
        table.append_bounds(tmp_path / run / "bounds.csv", [make_row(run=run)])
    df = table.collect([tmp_path])
    assert sorted(df["run"]) == ["a", "b"]
    with pytest.raises(IJCKDError, match="no bounds.csv found"):
        table.collect([tmp_path / "a" / "nothing"])


def _margin_block(checkpoint, n, value=0.5, run="r"):
    return pd.DataFrame({"run": run, "method": "kd", "epoch": int(checkpoint[6:10]),
                         "checkpoint": checkpoint, "teacher_margin": value,
                         "feat_dist": [0.1 * i for i in range(n)],
                         "disagree": [i % 2 == 0 for i in range(n)]})


def test_margin_blocks_append_and_a_retracked_checkpoint_replaces_its_whole_block(tmp_path):
    path = tmp_path / "margins.csv"
    table.append_margins(path, _margin_block("epoch_0001.pt", 5))
    table.append_margins(path, _margin_block("epoch_0002.pt", 4))
    table.append_margins(path, _margin_block("epoch_0002.pt", 4, run="other"))
    written = pd.read_csv(path)
    assert list(written.columns) == list(schema.MARGIN_COLUMNS) + ["sample"]
    assert written.groupby(["run", "checkpoint"]).size().to_dict() == {
        ("other", "epoch_0002.pt"): 4, ("r", "epoch_0001.pt"): 5, ("r", "epoch_0002.pt"): 4}
    # the appended rows read back as the rows given
    pd.testing.assert_frame_equal(
        written.iloc[5:9].reset_index(drop=True),
        _margin_block("epoch_0002.pt", 4).assign(sample=range(4)), check_dtype=False)
    # tracked again with fewer samples: no row of the old block survives
    table.append_margins(path, _margin_block("epoch_0001.pt", 3, value=0.9))
    written = pd.read_csv(path)
    block = written[(written["run"] == "r") & (written["checkpoint"] == "epoch_0001.pt")]
    assert len(block) == 3 and (block["teacher_margin"] == 0.9).all()
    assert len(written) == 3 + 4 + 4


def test_a_table_with_other_column_order_is_rewritten_in_the_standard_one(tmp_path):
    path = tmp_path / "margins.csv"
    first = _margin_block("epoch_0001.pt", 3).assign(sample=range(3))
    first[list(reversed(first.columns))].to_csv(path, index=False)
    table.append_margins(path, _margin_block("epoch_0002.pt", 2))
    written = pd.read_csv(path)
    assert list(written.columns) == list(schema.MARGIN_COLUMNS) + ["sample"]
    assert written["checkpoint"].tolist() == ["epoch_0001.pt"] * 3 + ["epoch_0002.pt"] * 2
