"""Chapter results: machine-readable JSON and parquet in ``results/``, glued into the text.

A chapter creates one :class:`Results`, records its headline numbers with
:meth:`Results.add` (which also glues them for the book's prose), and calls
:meth:`Results.save` at the end. The JSON holds only what the chapter computed from its
parameters, so re-running a chapter with the same parameters writes an identical file;
timings go to a separate ``<chapter>.timing.json`` (:meth:`Results.time`,
:meth:`Results.add_time`, and table columns of wall-clock seconds).

During :func:`analysis_lib.pipeline.run_chapter` a chapter writes into a per-run staging folder
(:func:`output_dir`), which is published into :func:`results_dir` in one step when the chapter
has finished; read other chapters' results from :func:`results_dir`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StudyError

RESULTS_ENV = "GENDER_NEURONS_RESULTS"
#: set by :func:`analysis_lib.pipeline.run_chapter` for the chapter's kernel: the per-run
#: folder the chapter writes into; its files are published into ``results_dir()`` in one step
#: when the chapter has finished, so ``results/`` never mixes two runs.
STAGE_ENV = "GENDER_NEURONS_RESULTS_STAGE"


def repo_root() -> Path:
    """The checkout holding this package (where ``results/`` and ``book/`` live)."""
    return Path(__file__).resolve().parent.parent


def results_dir() -> Path:
    """``$GENDER_NEURONS_RESULTS`` if set, else ``<repo>/results`` (created if missing).

    Raises:
        StudyError: the path is not a directory or cannot be created.
    """
    d = Path(os.environ.get(RESULTS_ENV) or repo_root() / "results")
    where = f"${RESULTS_ENV}={d}" if os.environ.get(RESULTS_ENV) else str(d)
    if d.exists() and not d.is_dir():
        raise StudyError(f"The results path {where} is not a directory; point {RESULTS_ENV} at a folder.")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudyError(
            f"Cannot create the results folder {where} ({exc.strerror or exc}); point {RESULTS_ENV} at a "
            "writable folder."
        ) from None
    return d


def output_dir() -> Path:
    """Where a chapter writes its results: the run's staging folder during
    :func:`analysis_lib.pipeline.run_chapter` (``$GENDER_NEURONS_RESULTS_STAGE``), else
    :func:`results_dir`. Read other chapters' results from :func:`results_dir`."""
    stage = os.environ.get(STAGE_ENV)
    if stage:
        d = Path(stage)
        d.mkdir(parents=True, exist_ok=True)
        return d
    return results_dir()


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python, floats rounded to 10 significant digits."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v) or math.isinf(v):
            return None
        return float(f"{v:.10g}")
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _plain(value.item())
    return value


def write_atomic(path: Path, text: str) -> None:
    """Write a text file via a temporary file and a rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class Results:
    """Collects a chapter's headline numbers and tables.

    Args:
        chapter: the chapter's name (the notebook's file stem).
        parameters: the chapter's parameters (stored with the results).
        glue: glue each number for the book (needs myst-nb; off outside notebooks).
    """

    def __init__(self, chapter: str, parameters: dict[str, Any] | None = None, *, glue: bool = True):
        self.chapter = chapter
        self.parameters = dict(parameters or {})
        self.values: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.glue = glue

    def add(self, key: str, value: Any, *, fmt: str | None = None) -> Any:
        """Record ``value`` under ``key`` and glue it as ``key`` (formatted with ``fmt``).

        A :class:`~analysis_lib.metrics` confidence interval is stored as a dict and glued
        twice: ``key`` (the estimate) and ``key_ci`` (``"[low, high]"``).
        """
        stored = value
        if hasattr(value, "estimate") and hasattr(value, "low"):
            stored = {"estimate": value.estimate, "low": value.low, "high": value.high, "n": getattr(value, "n", None)}
        self.values[key] = _plain(stored)
        if self.glue:
            _glue_value(key, value, fmt)
        return value

    def table(self, key: str, frame) -> None:
        """Save a pandas table as ``results/<chapter>__<key>.parquet`` (atomically).

        Wall-clock columns (``seconds`` or a name ending in ``_seconds``) never enter the
        reproducible table: they are dropped from it and kept in the timing file under
        ``<key>.<column>``, so a rerun with the same parameters writes identical bytes.
        """
        clocks = [c for c in frame.columns if _is_clock_column(c)]
        if clocks:
            for c in clocks:
                self.timings[f"{key}.{c}"] = [None if v != v else round(float(v), 3) for v in frame[c].tolist()]
            frame = frame.drop(columns=clocks)
        path = output_dir() / f"{self.chapter}__{key}.parquet"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            frame.to_parquet(tmp, index=False)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def time(self, key: str, seconds: float) -> None:
        """Record a timing (kept apart from the reproducible results)."""
        self.timings[key] = round(float(seconds), 3)

    def add_time(self, key: str, seconds: float, *, fmt: str = ".0f") -> float:
        """Record a wall-clock value for the prose without making the results irreproducible.

        The value goes to ``<chapter>.timing.json`` (like :meth:`time`) and is glued as ``key``
        formatted with ``fmt``, but it never enters ``<chapter>.json``.

        Returns:
            ``seconds`` as a float.
        """
        seconds = float(seconds)
        self.time(key, seconds)
        if self.glue:
            _glue_value(key, seconds, fmt)
        return seconds

    def save(self) -> Path:
        """Write ``results/<chapter>.json`` (and the timing file) atomically."""
        payload = {"chapter": self.chapter, "parameters": _plain(self.parameters), "results": self.values}
        path = output_dir() / f"{self.chapter}.json"
        write_atomic(path, json.dumps(payload, indent=1, sort_keys=True) + "\n")
        if self.timings:
            write_atomic(
                output_dir() / f"{self.chapter}.timing.json", json.dumps(self.timings, indent=1, sort_keys=True) + "\n"
            )
        return path


def _is_clock_column(name: Any) -> bool:
    """A table column that holds wall-clock seconds (never part of the reproducible results)."""
    return isinstance(name, str) and (name == "seconds" or name.endswith("_seconds"))


def _glue_value(key: str, value: Any, fmt: str | None) -> None:
    try:
        from myst_nb import glue
    except ImportError:  # outside a book build
        return
    if hasattr(value, "estimate") and hasattr(value, "low"):
        f = fmt or ".3g"
        glue(key, format(value.estimate, f), display=False)
        glue(f"{key}_ci", f"[{format(value.low, f)}, {format(value.high, f)}]", display=False)
        return
    glue(key, format(value, fmt) if fmt else value, display=False)


def load_results(chapter: str) -> dict[str, Any]:
    """The saved results of a chapter (for the results chapter and tests)."""
    path = results_dir() / f"{chapter}.json"
    if not path.is_file():
        raise StudyError(f"No results for chapter {chapter!r} at {path}: run `python -m analysis_lib run {chapter}` first.")
    return json.loads(path.read_text())
