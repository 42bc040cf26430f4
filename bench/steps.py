"""Step table of executed chapters: which cells take the time (issue 19, "measure first").

Reads papermill's per-cell durations from executed notebooks (``book/*.ipynb`` or a ``run
--output`` folder) and prints, per chapter, the cells that make up most of its time as a
Markdown table (cell number, seconds, share of the chapter, the cell's first code line), so the
largest steps are where speed work goes. Run it on notebooks executed on an idle host and quote
the load average beside the table.

    python bench/steps.py book/05_editing_bias.ipynb runs/full/06_crispr.ipynb --top 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat


def cell_durations(path: Path) -> list[tuple[int, float, str]]:
    """``(code-cell number, seconds, first code line)`` of every executed code cell."""
    nb = nbformat.read(path, as_version=4)
    rows, k = [], 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        k += 1
        pm = cell.metadata.get("papermill", {})
        if pm.get("duration") is None:
            continue
        first = next((ln.strip() for ln in cell.source.splitlines() if ln.strip() and not ln.startswith("#")), "")
        rows.append((k, float(pm["duration"]), first[:70]))
    return rows


def step_table(path: Path, top: int) -> str:
    rows = cell_durations(path)
    if not rows:
        return f"{path}: no papermill durations (not an executed chapter)\n"
    total = sum(d for _, d, _ in rows)
    out = [f"### {path.stem} ({total / 60:.1f} min in {len(rows)} cells)", "",
           "| cell | seconds | share | first line |", "|---:|---:|---:|---|"]
    for k, d, first in sorted(rows, key=lambda r: -r[1])[:top]:
        out.append(f"| {k} | {d:.0f} | {100 * d / total:.0f} % | `{first.replace('|', '/')}` |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=8, help="cells per chapter (the slowest)")
    args = ap.parse_args(argv)
    missing = [p for p in args.notebooks if not p.is_file()]
    if missing:
        print(f"No such notebook: {', '.join(map(str, missing))}. Pass executed chapters, e.g. book/*.ipynb "
              "after `make book`, or the --output folder of `python -m analysis_lib run`.", file=sys.stderr)
        return 2
    for p in args.notebooks:
        print(step_table(p, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
