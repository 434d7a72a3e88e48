"""Run and dataset ids that look like numbers ("2024", "0042") read back as the strings they were
written as, whichever other runs exist: the partition folders are read as strings, not inferred."""

import pandas as pd
from vad.storage import PARTITIONING, read_table, write_table


def _write(root, dataset: str, run: str) -> None:
    write_table(root, "frames", dataset, run, pd.DataFrame({"video": ["v"], "frame": [0], "score": [0.5]}))


def test_numeric_run_ids_are_strings_alone_and_beside_others(tmp_path):
    _write(tmp_path, "cam", "2024")  # the only run: pyarrow alone would read `run` as integers
    assert read_table(tmp_path, "frames", dataset="cam", run_id="2024").run.tolist() == ["2024"]
    _write(tmp_path, "cam", "0042")
    assert sorted(read_table(tmp_path, "frames", dataset="cam").run) == ["0042", "2024"]  # the leading zero kept
    _write(tmp_path, "cam", "abc")
    _write(tmp_path, "2025", "2024")  # a numeric dataset name too
    rows = read_table(tmp_path, "frames", run_id="2024")
    assert sorted(zip(rows.dataset, rows.run)) == [("2025", "2024"), ("cam", "2024")]
    assert read_table(tmp_path, "frames", dataset="2025").run.tolist() == ["2024"]


def test_plain_pandas_reads_numeric_ids_with_the_storage_partitioning(tmp_path):
    _write(tmp_path, "cam", "2024")
    _write(tmp_path, "cam", "0042")
    frames = pd.read_parquet(tmp_path / "scores" / "frames", filters=[("run", "==", "0042")], partitioning=PARTITIONING)
    assert frames.run.tolist() == ["0042"] and frames.dataset.tolist() == ["cam"]
