"""Reruns are byte-identical (issue 17): run chapters twice with the same parameters, compare.

Executes the chosen chapters in book order into a first temporary root (notebooks and
``results/``), then again into a second, and compares every results file of each chapter
(``<chapter>.json``, ``<chapter>__*.parquet`` and any other file or folder the run published, as
its root's execution log names them, e.g. chapter 1's ``commonwords/``; the ``*.timing.json``
files are exempt, wall clocks belong there) byte for byte. Prints one Markdown row per chapter: the files compared,
identical or different, and the first differing file with what differs in it (a JSON key, a
table's columns and the largest difference). Exit status 0 when every file is identical, 1
otherwise.

    python bench/check_reruns.py                          # every chapter, quick profile (~15-40 min)
    python bench/check_reruns.py --chapters 0 1 6         # some chapters (earlier ones' results via --upstream)
    python bench/check_reruns.py --chapters 7 --upstream results/
    python bench/check_reruns.py --compare ROOT_A ROOT_B  # compare two earlier runs, execute nothing

A chapter that reads earlier chapters' results (6 reads 5, 7 reads every chapter) reads them
from its own root, so run the chapters it needs in the same call or pass ``--upstream DIR``:
that folder's results of the chapters not run are copied into both roots first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def results_files(results: Path, chapter: str) -> list[str]:
    """A chapter's reproducible results in a results folder: ``<chapter>.json``, its tables and
    any other file or folder the run published (timings, locks, staging left out)."""
    if not results.is_dir():
        return []
    from analysis_lib import pipeline

    log = pipeline.read_execution_log(results.parent)  # the root's execution log names what each run published
    extra = set(log.get(chapter, {}).get("outputs", []))
    names = [p.name for p in results.iterdir() if not p.name.startswith(".")
             and (p.name == f"{chapter}.json" or p.name.startswith(f"{chapter}__") or p.name in extra)]
    return sorted(n for n in names if not n.endswith(".timing.json"))


def _first_json_difference(a, b, path: str = "") -> str | None:
    if type(a) is not type(b):
        return f"{path or '/'}: {a!r:.60} vs {b!r:.60}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}/{k}: only in {'the second' if k not in a else 'the first'} run"
            d = _first_json_difference(a[k], b[k], f"{path}/{k}")
            if d:
                return d
        if list(a) != list(b):
            return f"{path or '/'}: same keys in another order"
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_json_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path}: {a!r:.60} vs {b!r:.60}"


def describe_difference(a: Path, b: Path) -> str:
    """What differs between two versions of a results file, in a few words."""
    if a.is_dir() and b.is_dir():
        ka = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
        kb = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
        if ka != kb:
            return f"folder: {sorted(ka ^ kb)[0]} in one run only"
        k = next(k for k in sorted(ka) if (a / k).read_bytes() != (b / k).read_bytes())
        return f"folder: {k}: " + describe_difference(a / k, b / k)
    if a.is_dir() or b.is_dir():
        return "a folder in one run, a file in the other"
    if a.suffix == ".json":
        try:
            d = _first_json_difference(json.loads(a.read_text()), json.loads(b.read_text()))
        except ValueError as exc:
            return f"unreadable JSON ({exc})"
        return d or "same content, other bytes (formatting)"
    if a.suffix == ".parquet":
        import numpy as np
        import pandas as pd
        import pyarrow.parquet as pq

        fa, fb = pd.read_parquet(a), pd.read_parquet(b)
        if list(fa.columns) != list(fb.columns):
            return f"columns {list(fa.columns)} vs {list(fb.columns)}"
        if fa.shape != fb.shape:
            return f"shape {fa.shape} vs {fb.shape}"
        out = []
        for c in fa.columns:
            x, y = fa[c], fb[c]
            if x.equals(y):
                continue
            if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
                xv, yv = x.to_numpy(dtype=float), y.to_numpy(dtype=float)
                rows = int((~((xv == yv) | (np.isnan(xv) & np.isnan(yv)))).sum())
                out.append(f"{c} ({rows} rows, max abs diff {np.nanmax(np.abs(xv - yv)):.3g})")
            else:
                rows = int((x.astype(str) != y.astype(str)).sum())
                out.append(f"{c} ({rows} rows)")
        if out:
            return "columns " + ", ".join(out)
        ma, mb = pq.read_metadata(a), pq.read_metadata(b)
        if ma.metadata != mb.metadata:
            return "same values, other schema metadata"
        return "same values, other bytes (encoding)"
    return "other bytes"


def _same(a: Path, b: Path) -> bool:
    if a.is_dir() and b.is_dir():
        ka = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        kb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        return ka == kb and all((a / k).read_bytes() == (b / k).read_bytes() for k in ka)
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


def compare(root_a: Path, root_b: Path, chapters: list[str]) -> list[dict]:
    """One row per chapter: files compared, identical or not, the first differing file."""
    rows = []
    for c in chapters:
        na, nb = results_files(root_a / "results", c), results_files(root_b / "results", c)
        row = {"chapter": c, "files": len(set(na) | set(nb)), "identical": bool(na) and na == nb, "first": "",
               "detail": "", "differing": []}
        if not na and not nb:
            row["detail"] = "no results in either run"
        elif na != nb:
            row["first"] = sorted(set(na) ^ set(nb))[0]
            row["detail"] = "written by one run only"
            row["differing"] = sorted(set(na) ^ set(nb))
        for n in sorted(set(na) & set(nb)):
            a, b = root_a / "results" / n, root_b / "results" / n
            if not _same(a, b):
                row["identical"] = False
                row["differing"].append(n)
                if not row["first"]:
                    row["first"], row["detail"] = n, describe_difference(a, b)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| chapter | files compared | reruns | first differing file | what differs |", "|---|---:|---|---|---|"]
    for r in rows:
        more = f" (+{len(r['differing']) - 1} more)" if len(r["differing"]) > 1 else ""
        out.append(f"| {r['chapter']} | {r['files']} | {'identical' if r['identical'] else 'DIFFERENT'} | "
                   f"{r['first']}{more} | {r['detail'].replace('|', '/')} |")
    return "\n".join(out)


def run_root(root: Path, chapters: list[str], profile: str, parameters: dict, upstream: Path | None) -> dict[str, float]:
    """Execute the chapters in order into ``root`` (notebooks) and ``root/results``; seconds per chapter."""
    from analysis_lib import pipeline

    results = root / "results"
    results.mkdir(parents=True, exist_ok=True)
    if upstream is not None:
        for p in sorted(upstream.iterdir()):
            owner = p.name.split("__", 1)[0].removesuffix(".timing.json").removesuffix(".json")
            if p.name.startswith(".") or owner in chapters:
                continue
            if p.is_dir():  # a published folder (chapter 1's commonwords/); a chapter that is run replaces it
                shutil.copytree(p, results / p.name, dirs_exist_ok=True)
            else:
                shutil.copy2(p, results / p.name)
    seconds = {}
    for c in chapters:
        t0 = time.perf_counter()
        pipeline.run_chapter(c, profile=profile, parameters=parameters, output_dir=root, results=results)
        seconds[c] = time.perf_counter() - t0
        print(f"  {root.name}: {c} in {seconds[c]:.0f} s", flush=True)
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", help="parameter profile (default quick)")
    ap.add_argument("--chapters", nargs="+", default=None, metavar="CHAPTER",
                    help="chapter names or numbers (default: every chapter, in book order)")
    ap.add_argument("-p", "--parameter", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter in both runs (as in `python -m analysis_lib run`)")
    ap.add_argument("--upstream", type=Path, default=None, metavar="DIR",
                    help="a results folder whose files of the chapters not run are copied into both roots first")
    ap.add_argument("--root", type=Path, default=None, metavar="DIR",
                    help="where the two roots go (default: a temporary folder, removed afterwards unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the two roots (their paths are printed)")
    ap.add_argument("--compare", nargs=2, type=Path, default=None, metavar=("ROOT_A", "ROOT_B"),
                    help="compare two roots of earlier runs (each holding results/) and execute nothing")
    args = ap.parse_args(argv)

    from analysis_lib import pipeline

    chapters = [pipeline.resolve_chapter(c) for c in args.chapters] if args.chapters else pipeline.chapters()
    chapters = [c for c in pipeline.chapters() if c in chapters]  # book order: later chapters read earlier ones
    if args.compare:
        rows = compare(*args.compare, chapters)
        print(table(rows))
        return 0 if all(r["identical"] for r in rows) else 1
    parameters = pipeline.parse_cli_parameters(args.parameter)
    base = args.root or Path(tempfile.mkdtemp(prefix="check-reruns-"))
    base.mkdir(parents=True, exist_ok=True)
    roots = (base / "A", base / "B")
    print(f"profile {args.profile}, chapters {' '.join(c[:2] for c in chapters)}, roots {roots[0]} and {roots[1]}",
          flush=True)
    try:
        t0 = time.perf_counter()
        times = [run_root(r, chapters, args.profile, parameters, args.upstream) for r in roots]
        rows = compare(*roots, chapters)
        print()
        print(table(rows))
        print()
        print("wall time per chapter (first run, second run): " + ", ".join(
            f"{c[:2]} {times[0][c]:.0f}/{times[1][c]:.0f} s" for c in chapters)
            + f"; {(time.perf_counter() - t0) / 60:.1f} min in all")
    finally:
        if args.keep or args.root:
            print(f"roots kept: {roots[0]} {roots[1]}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
