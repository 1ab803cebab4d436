"""What a paper table looks like: its rows, descriptive columns and measured columns.

A table is data, not code: adding one (e.g. the comparison table) means writing one `TableSpec`
in `paper.py` and an experiment config whose `table:` key names it.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Measure:
    """A measured column: read `key` from a job's metrics.json, shown beside the paper's value.

    `scale` converts the stored value to the table's unit (e.g. parameters -> millions); `plot`
    puts the column into the PNG (mIoU columns, not speed).
    """

    name: str
    key: str
    digits: int = 2
    scale: float = 1.0
    plot: bool = False


@dataclass(frozen=True)
class Row:
    """One row of a paper table.

    `choice` is the option of the table's row group (`TableSpec.row_group`) that runs this row.
    `cells` holds the paper's descriptive columns, `paper` its numbers by measure name. `keys`
    reads a measure from another metrics.json key for this row only: Table 4's CRF row is the
    ASPP job read at `val_crf/mIoU`, so one job gives two rows.
    """

    choice: str
    cells: dict[str, str]
    paper: dict[str, float]
    keys: dict[str, str] = field(default_factory=dict)

    def key(self, measure: Measure) -> str:
        return self.keys.get(measure.name, measure.key)


@dataclass(frozen=True)
class TableSpec:
    """A paper table: which config group picks a row, and the columns to print."""

    name: str
    title: str
    source: str
    row_group: str
    columns: tuple[str, ...]
    measures: tuple[Measure, ...]
    rows: tuple[Row, ...]
