"""Build the paper's tables from a Hydra multirun folder (design.md I7): see
experiments/tables.py."""

from pathlib import Path

from deeplab.runtime.atomic import written_atomically
from deeplab.runtime.errors import UserError
from deeplab.tables.build import RowResult, build_rows
from deeplab.tables.paper import TABLES
from deeplab.tables.render import markdown, write_csv, write_png
from deeplab.tables.runs import Job, load_jobs, table_name
from deeplab.tables.spec import TableSpec

__all__ = ["TABLES", "build_table", "make_table", "write_table"]


def build_table(
    sweep_dir: Path, table: str | None = None
) -> tuple[TableSpec, list[Job], list[RowResult]]:
    """The paper table the sweep's jobs fill (`table`, else the one their configs name), its jobs
    and one result per paper row."""
    jobs = load_jobs(sweep_dir)
    name = table or table_name(jobs)
    if name not in TABLES:
        raise UserError(
            f"no paper table named {name!r} (known: {sorted(TABLES)}): add its TableSpec to "
            "TABLES in src/deeplab/tables/paper.py"
        )
    spec = TABLES[name]
    return spec, jobs, build_rows(spec, jobs)


def write_table(spec: TableSpec, results: list[RowResult], out_dir: Path) -> str:
    """Write <table>.{md,csv,png} into `out_dir` and return the markdown."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(spec, results)
    with written_atomically(out_dir / f"{spec.name}.md") as tmp:
        tmp.write_text(text)
    write_csv(spec, results, out_dir / f"{spec.name}.csv")
    write_png(spec, results, out_dir / f"{spec.name}.png")
    return text


def make_table(sweep_dir: Path, out_dir: Path | None = None, table: str | None = None) -> str:
    """Read every job under `sweep_dir`, write table.{md,csv,png} into `out_dir` (default: the
    sweep folder) and return the markdown."""
    spec, _, results = build_table(sweep_dir, table)
    return write_table(spec, results, Path(out_dir or sweep_dir))
