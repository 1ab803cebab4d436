"""Print a paper table from a Hydra multirun folder, beside the paper's numbers (design.md I7).

    python experiments/tables.py multirun/2026-11-21/23-10-00

Detects the table from the `table:` key that conf/experiment/tableN.yaml puts into every job,
prints it as markdown and writes tableN.md, tableN.csv and tableN.png next to the jobs (or --out).
With --wandb it also logs the table as a W&B run of the sweep's group (docs/wandb.md).
"""

import argparse
from pathlib import Path

from deeplab.runtime.cli import reports_user_errors
from deeplab.tables import TABLES, build_table, write_table


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
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log the table as a W&B run of the sweep's group (offline unless logged in)",
    )
    args = parser.parse_args(argv)
    spec, jobs, results = build_table(args.sweep_dir, args.table)
    out_dir = args.out or args.sweep_dir
    text = write_table(spec, results, out_dir)
    print(text)
    if args.wandb:
        from deeplab.tables.dashboard import log_table

        run_dir = log_table(spec, jobs, results, text, out_dir)
        folders = " ".join(f"{d}/*/wandb" for d in dict.fromkeys([args.sweep_dir, out_dir]))
        print(f"W&B run {run_dir}; upload it with the sweep: wandb sync {folders}")


if __name__ == "__main__":
    main()
