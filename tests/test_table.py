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
               split="eval", checkpoint=checkpoint)
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
