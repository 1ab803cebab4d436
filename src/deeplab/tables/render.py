"""Write a built table as markdown, CSV and a PNG bar chart (measured beside paper)."""

import csv
from pathlib import Path

from deeplab.engine.visuals import new_figure, save_figure
from deeplab.runtime.atomic import written_atomically
from deeplab.tables.build import RowResult
from deeplab.tables.spec import TableSpec


def _header(spec: TableSpec) -> list[str]:
    measured = [name for m in spec.measures for name in (m.name, f"{m.name} (paper)")]
    return [*spec.columns, *measured, "Ran", "Jobs", "Status"]


def _status(result: RowResult) -> str:
    if not result.jobs:
        return "missing"
    failed = sum(job.metrics is None for job in result.jobs)
    return "ok" if not failed else f"{failed}/{len(result.jobs)} failed"


def _cells(spec: TableSpec, result: RowResult) -> list[str]:
    cells = [result.row.cells[column] for column in spec.columns]
    for m in spec.measures:
        paper = result.row.paper.get(m.name)
        cells += [
            result.values[m.name].text(m.digits),
            "" if paper is None else f"{paper:.{m.digits}f}",
        ]
    jobs = " ".join(job.path.name for job in result.jobs)
    return [*cells, result.ran, jobs, _status(result)]


def cells(spec: TableSpec, results: list[RowResult]) -> tuple[list[str], list[list[str]]]:
    """The header and the rows' cells, as the markdown and CSV show them."""
    return _header(spec), [_cells(spec, r) for r in results]


def markdown(spec: TableSpec, results: list[RowResult]) -> str:
    header = _header(spec)
    lines = [f"**{spec.title}** (paper numbers: {spec.source})", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(_cells(spec, r)) + " |" for r in results]
    return "\n".join(lines) + "\n"


def write_csv(spec: TableSpec, results: list[RowResult], path: Path) -> None:
    with written_atomically(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(_header(spec))
        writer.writerows(_cells(spec, r) for r in results)


def _label(spec: TableSpec, result: RowResult) -> str:
    """'Kernel 7x7, Rate 4, FOV 224'; check-mark columns by name only ('MSC, COCO')."""
    cells = [(c, result.row.cells[c]) for c in spec.columns if result.row.cells[c]]
    return ", ".join(c if v == "✓" else f"{c} {v}" for c, v in cells) or "baseline"


def write_png(spec: TableSpec, results: list[RowResult], path: Path) -> None:
    """Grouped bars per row: each plotted measure, measured (solid) and paper (hatched).
    A row without a measured value gets its status ("failed", "missing") in place of a bar."""

    measures = [m for m in spec.measures if m.plot]
    labels = [_label(spec, r) for r in results]
    width = 0.8 / (2 * len(measures))
    fig = new_figure(figsize=(max(7.0, 1.8 * len(results) + 2.0), 4.5))
    ax = fig.subplots()
    for i, m in enumerate(measures):
        for j, kind in enumerate(("measured", "paper")):
            offset = (2 * i + j - len(measures) + 0.5) * width
            if kind == "paper":
                heights = [r.row.paper.get(m.name) for r in results]
            else:
                heights = [r.values[m.name].mean for r in results]
            drawn = [(x, h) for x, h in enumerate(heights) if h is not None]
            if drawn:
                xs, hs = zip(*drawn, strict=True)
                ax.bar(
                    [x + offset for x in xs],
                    hs,
                    width,
                    color=f"C{i}",
                    alpha=1.0 - 0.5 * j,
                    hatch="//" if j else None,
                    label=f"{m.name} {kind}",
                )
            for x, r in enumerate(results):
                if heights[x] is None and kind == "measured":
                    ax.text(
                        x + offset,
                        1,
                        r.values[m.name].status,
                        rotation=90,
                        ha="center",
                        va="bottom",
                        fontsize=8,
                    )
    ax.set_xticks(range(len(results)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("mIoU (%)")
    ax.set_title(spec.title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    save_figure(path, fig, dpi=120)
