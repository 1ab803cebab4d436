"""Print a paper table from a Hydra multirun folder, beside the paper's numbers (design.md I7).

    python experiments/tables.py multirun/2026-11-21/23-10-00

Detects the table from the `table:` key that conf/experiment/tableN.yaml puts into every job,
prints it as markdown and writes tableN.md, tableN.csv and tableN.png next to the jobs (or --out).
"""

import argparse
from pathlib import Path

from deeplab.runtime.cli import reports_user_errors
from deeplab.tables import TABLES, make_table


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="the multirun folder (multirun/DATE/TIME)")
    parser.add_argument(
        "--out", type=Path, help="where to write the .md/.csv/.png (default: sweep_dir)"
    )
    parser.add_argument(
        "--table", choices=sorted(TABLES), help="table to build (default: detected)"
    )
    args = parser.parse_args(argv)
    print(make_table(args.sweep_dir, args.out, args.table))


if __name__ == "__main__":
    main()
