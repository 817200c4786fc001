"""e2e.install.table_row: a kubectl table row read by its headers' positions."""

from __future__ import annotations

from e2e.install import table_row

# Real output (docs/kubectl.md): on-l40s prints nothing for TP, GPU, ROUTER and HELD.
HEADER = (
    "NAME              READY   REPLICAS   AVAILABLE   TP    GPU                     ROUTER   "
    "HELD   HEALTH                  AGE"
)
SERVED = (
    "magistral-small   True    1          1           1     NVIDIA-H100-80GB-HBM3   2/2      "
    "0      AsExpected              73s"
)
UNSIZED = (
    "on-l40s           False   0          0                                                  "
    "       InsufficientGPUMemory   64s"
)


def test_every_column_of_a_full_row() -> None:
    assert table_row(HEADER, SERVED) == {
        "NAME": "magistral-small",
        "READY": "True",
        "REPLICAS": "1",
        "AVAILABLE": "1",
        "TP": "1",
        "GPU": "NVIDIA-H100-80GB-HBM3",
        "ROUTER": "2/2",
        "HELD": "0",
        "HEALTH": "AsExpected",
        "AGE": "73s",
    }


def test_empty_values_stay_in_their_columns() -> None:
    row = table_row(HEADER, UNSIZED)
    assert (row["TP"], row["GPU"], row["ROUTER"], row["HELD"]) == ("", "", "", "")
    assert (row["HEALTH"], row["AGE"]) == ("InsufficientGPUMemory", "64s")
