"""Build the paper's tables from a Hydra multirun folder (design.md I7): see
experiments/tables.py."""

from pathlib import Path

from deeplab.runtime.atomic import written_atomically
from deeplab.runtime.errors import UserError
from deeplab.tables.build import build_rows
from deeplab.tables.paper import TABLES
from deeplab.tables.render import markdown, write_csv, write_png
from deeplab.tables.runs import load_jobs, table_name

__all__ = ["TABLES", "make_table"]


def make_table(sweep_dir: Path, out_dir: Path | None = None, table: str | None = None) -> str:
    """Read every job under `sweep_dir`, write table.{md,csv,png} into `out_dir` (default: the
    sweep folder) and return the markdown."""
    jobs = load_jobs(sweep_dir)
    name = table or table_name(jobs)
    if name not in TABLES:
        raise UserError(
            f"no paper table named {name!r} (known: {sorted(TABLES)}): add its TableSpec to "
            "TABLES in src/deeplab/tables/paper.py"
        )
    spec = TABLES[name]
    results = build_rows(spec, jobs)
    out_dir = Path(out_dir or sweep_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(spec, results)
    with written_atomically(out_dir / f"{name}.md") as tmp:
        tmp.write_text(text)
    write_csv(spec, results, out_dir / f"{name}.csv")
    write_png(spec, results, out_dir / f"{name}.png")
    return text
