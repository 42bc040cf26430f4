"""The book's execution cache: a chapter whose inputs are unchanged is not executed again.

``python -m analysis_lib book`` (``make book``) keys every chapter by a sha256 over everything
its executed notebook and results depend on, and keeps the executed notebook and the results
files of each key in a small store beside the executed chapters
(``book/.execution_cache/<chapter>/<key>/``). When a chapter's key has an entry, the entry is
verified and republished instead of executing the chapter; ``book --force`` (``make book
FORCE=1``) executes every chapter again. One-off ``run``s never use the cache.

**The key** (:func:`chapter_inputs`) is the sha256 of these components, each a digest:

``code``
    the chapter's code cells (source and tags, in order). Markdown is *not* part of the key: a
    prose-only edit reuses the outputs, and :func:`splice_prose` puts the new markdown cells
    into the cached executed notebook.
``parameters``
    the resolved parameters papermill is given (the profile included).
``analysis_lib``
    every file of the imported ``analysis_lib`` package (``.py``, ``profiles.yaml``, the
    CommonWords data, ...), bytecode caches left out. Any change, a comment included,
    re-executes every chapter: the cache does not guess which chapter uses which function.
``upstream``
    the current bytes of the results files that the earlier chapters of the book published
    (the names are taken from the book's execution log; timing files left out, since they
    change on every execution). Chapters read earlier chapters' results (chapter 5 reads
    chapter 4's general neurons, chapter 6 chapter 5's edit, chapter 7 every chapter), and
    results are byte-identical when a chapter is re-executed with the same inputs, so an
    upstream chapter that re-executes without changing its results leaves the later chapters
    reused; one whose results changed re-executes every later chapter (also those that do not
    read them: safe rather than clever).
``data``
    the data folder's ``SHA256SUMS`` (:mod:`analysis_lib.data` checks every data file against
    it at every read, so these checksums stand for the data files themselves).
``models``
    the sha256 of each built-in model's GGUF (:func:`analysis_lib.models.expected_sha256`: the
    float-weight cache is keyed by it and verified against its manifest, so nothing large is
    hashed here); for a Hugging Face id, the commit its local hub cache resolves to; for a
    local model folder, its files' names, sizes and modification times.
``packages``
    Python's version and the versions of :data:`KEYED_PACKAGES`.

**The store.** An entry is written into a temporary folder and renamed into place, so an
interrupted write leaves nothing that is trusted. Its ``entry.json`` records the sha256 of
every stored file; before a reuse every file is hashed again, and a damaged or incomplete entry
is removed and the chapter executed, with a one-line notice. A reuse publishes the stored
results through the same staging folder and rename as an execution (so they are byte-identical
to the executed run's), removes the results files that execution removed, and writes the
executed notebook only if its bytes differ from the book's (so Sphinx's incremental build
re-renders only pages that changed). At most :data:`MAX_ENTRIES` entries per chapter are kept
(the least recently used go first).
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

from .errors import StudyError

#: the folder of the store, inside the book folder (``book/.execution_cache``)
CACHE_DIRNAME = ".execution_cache"
#: bump when the key's recipe or the entry layout changes: every old entry then misses
KEY_FORMAT = 1
#: entries kept per chapter: enough for a quick and a full book (and one more of each) to
#: alternate without executing; a full-profile entry of the largest chapter is about 0.5 MB
MAX_ENTRIES = 4
#: packages whose version is part of every key: they compute the numbers (torch, the model
#: code, the bridge, the numerics) or write the results' bytes (pandas, pyarrow)
KEYED_PACKAGES = ("torch", "transformers", "transformer-lens", "numpy", "scipy", "pandas", "pyarrow", "datasets")
ENTRY_FILE = "entry.json"
NOTEBOOK_FILE = "notebook.ipynb"
RESULTS_FOLDER = "results"
#: the results files that never enter a key (wall-clock values differ on every execution)
TIMING_SUFFIX = ".timing.json"

#: what each component of the key is called in the "executed (reason: ...)" line
REASONS = {
    "code": "code of chapter changed",
    "parameters": "parameters changed",
    "analysis_lib": "analysis_lib changed",
    "upstream": "upstream results changed",
    "data": "data checksums changed",
    "models": "model weights changed",
    "packages": "package versions changed",
    "format": "cache format changed",
}


# ----------------------------------------------------------------------------- digests


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_sha(value: Any) -> str:
    return _sha(json.dumps(value, sort_keys=True, default=str).encode())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tree_files(folder: Path) -> list[Path]:
    """Every file under ``folder``, sorted, bytecode caches left out."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"})


def path_digest(path: Path) -> str:
    """sha256 of a file, of a folder's files (relative names and bytes), or ``"missing"``."""
    if path.is_file():
        return file_sha256(path)
    if path.is_dir():
        return _json_sha([[p.relative_to(path).as_posix(), file_sha256(p)] for p in _tree_files(path)])
    return "missing"


def _cell_tags(cell) -> list[str]:
    return sorted(cell.get("metadata", {}).get("tags", []))


def code_digest(nb) -> str:
    """The chapter's code cells (source and tags, in order): what is executed."""
    return _json_sha([[c.source, _cell_tags(c)] for c in nb.cells if c.cell_type == "code"])


def prose_digest(nb) -> str:
    """The chapter's other cells (markdown, raw) with their place among the code cells."""
    out, n_code = [], 0
    for c in nb.cells:
        if c.cell_type == "code":
            n_code += 1
        else:
            out.append([n_code, c.cell_type, c.source, _cell_tags(c)])
    return _json_sha(out)


def package_digest(package_dir: Path | None = None) -> str:
    """Every file of the ``analysis_lib`` package this process imports (names and bytes)."""
    return path_digest(Path(package_dir or Path(__file__).resolve().parent))


def data_digest() -> str:
    """The data folder's ``SHA256SUMS`` (``"none: hub"`` without a local data folder)."""
    from . import data  # local: keeps datasets out of the CLI's start-up (cli -> pipeline -> here)

    root = data.data_dir()
    if root is None:
        return "none: hub"
    sums = root / data.SUMS_FILE
    return file_sha256(sums) if sums.is_file() else f"no {data.SUMS_FILE}"


def builtin_models_digest() -> dict[str, str]:
    """The GGUF sha256 of every built-in model (a chapter may load any of them)."""
    from . import models  # local: keeps torch out of the CLI's start-up (cli -> pipeline -> here)
    out = {}
    for name in models.BUILTIN_MODELS:
        try:
            out[name] = models.expected_sha256(name)
        except StudyError as exc:  # not installed: the chapters that need it fail, the others may reuse
            out[name] = f"unavailable: {type(exc).__name__}"
    return out


def model_identity(name: str) -> str:
    """The identity of a non-built-in model: a local folder's files (names, sizes, times) or the
    commit a Hugging Face id resolves to in the local hub cache."""
    folder = Path(name)
    if folder.is_dir():
        return _json_sha([[p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns]
                          for p in _tree_files(folder)])
    try:
        from huggingface_hub import constants

        ref = Path(constants.HF_HUB_CACHE) / f"models--{name.replace('/', '--')}" / "refs" / "main"
        return ref.read_text().strip() if ref.is_file() else "not in the local hub cache"
    except ImportError:
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in KEYED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def environment_inputs(package_dir: Path | None = None) -> dict[str, str]:
    """The components shared by every chapter of one book run (computed once per run)."""
    return {
        "format": str(KEY_FORMAT),
        "analysis_lib": package_digest(package_dir),
        "data": data_digest(),
        "models": _json_sha(builtin_models_digest()),
        "packages": _json_sha(package_versions()),
    }


def upstream_files(chapter: str, book_chapters: Iterable[str], log: dict[str, Any], results: Path) -> dict[str, str]:
    """``{results file: digest}`` of what the chapters before ``chapter`` published into
    ``results`` (names from the execution log; a chapter without recorded names is taken to own
    ``<chapter>.json`` and ``<chapter>__*``). Timing files are left out."""
    out: dict[str, str] = {}
    for c in book_chapters:
        if c == chapter:
            break
        entry = log.get(c)
        if entry is None:
            continue
        names = entry.get("outputs")
        if names is None:
            names = [p.name for p in sorted(results.glob(f"{c}*"))
                     if p.name == f"{c}.json" or p.name.startswith(f"{c}__")]
        for name in names:
            if not name.endswith(TIMING_SUFFIX):
                out[name] = path_digest(results / name)
    return out


def chapter_inputs(nb, params: dict[str, Any], environment: dict[str, str], upstream: dict[str, str]) -> dict[str, str]:
    """Every component of a chapter's key (see the module docstring), each a digest."""
    from .models import BUILTIN_MODELS  # local: keeps torch out of the CLI's start-up

    model = str(params.get("model", ""))
    inputs = dict(environment)
    inputs["code"] = code_digest(nb)
    inputs["parameters"] = _json_sha(params)
    inputs["upstream"] = _json_sha(upstream)
    if model and model not in BUILTIN_MODELS:
        inputs["models"] = _json_sha([environment["models"], model, model_identity(model)])
    return inputs


def key_of(inputs: dict[str, str]) -> str:
    return _json_sha(inputs)


def change_reason(old: dict[str, str] | None, new: dict[str, str]) -> str:
    """Why a chapter is executed: the components that differ from its last entry's."""
    if old is None:
        return "no cache entry"
    changed = [REASONS.get(k, f"{k} changed") for k in REASONS if old.get(k) != new.get(k)]
    return ", ".join(changed) or "no cache entry"


# ----------------------------------------------------------------------------- the store


def cache_dir(book: Path) -> Path:
    return Path(book) / CACHE_DIRNAME


def entry_dir(book: Path, chapter: str, key: str) -> Path:
    return cache_dir(book) / chapter / key


def read_entry(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / ENTRY_FILE).read_text())
    except (OSError, ValueError):
        return None


def latest_inputs(book: Path, chapter: str, preferred_key: str | None = None) -> dict[str, str] | None:
    """The inputs of the entry a chapter's reason is judged against: the entry the book last
    published for it when it still exists, else the chapter's most recently used entry."""
    folder = cache_dir(book) / chapter
    if preferred_key:
        meta = read_entry(folder / preferred_key)
        if meta is not None:
            return meta.get("inputs")
    entries = sorted((p for p in folder.glob("*") if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    for p in entries:
        meta = read_entry(p)
        if meta is not None:
            return meta.get("inputs")
    return None


def entry_problems(path: Path, key: str) -> list[str]:
    """What is wrong with a stored entry (empty: every file matches its recorded sha256)."""
    meta = read_entry(path)
    if meta is None:
        return [f"{ENTRY_FILE} is missing or unreadable"]
    if (meta.get("key") != key or not isinstance(meta.get("files"), dict) or NOTEBOOK_FILE not in meta["files"]
            or not isinstance(meta.get("executed"), dict)):
        return [f"{ENTRY_FILE} does not describe this entry"]
    problems = []
    for rel, want in sorted(meta["files"].items()):
        f = path / rel
        if not f.is_file():
            problems.append(f"{rel} is missing")
            continue
        got = file_sha256(f)
        if got != want:
            problems.append(f"{rel} has sha256 {got[:12]}..., not {str(want)[:12]}...")
    return problems


def store_entry(book: Path, chapter: str, key: str, *, inputs: dict[str, str], notebook: Path, prose: str,
                results: Path, published: Iterable[str], removed: Iterable[str], executed: dict[str, Any]) -> Path:
    """Store an executed chapter under its key, atomically (a temporary folder renamed into
    place). ``published`` names the results files (or folders) the execution published into
    ``results``; ``removed`` those it removed from there."""
    published, removed = list(published), list(removed)
    folder = cache_dir(book) / chapter
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        shutil.copyfile(notebook, tmp / NOTEBOOK_FILE)
        (tmp / RESULTS_FOLDER).mkdir()
        for name in published:
            src = results / name
            if src.is_dir():
                shutil.copytree(src, tmp / RESULTS_FOLDER / name)
            else:
                shutil.copyfile(src, tmp / RESULTS_FOLDER / name)
        files = {p.relative_to(tmp).as_posix(): file_sha256(p) for p in _tree_files(tmp)}
        meta = {"format": KEY_FORMAT, "chapter": chapter, "key": key, "inputs": inputs, "prose": prose,
                "published": sorted(published), "removed": sorted(removed), "executed": executed, "files": files}
        (tmp / ENTRY_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        target = folder / key
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=".old-", dir=folder))
            os.replace(target, trash / key)
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    prune(folder)
    return target


def remove_entry(path: Path) -> None:
    """Take a (damaged) entry out of the store: renamed away first, so it is never read again."""
    if path.exists():
        trash = Path(tempfile.mkdtemp(prefix=".old-", dir=path.parent))
        os.replace(path, trash / path.name)
        shutil.rmtree(trash, ignore_errors=True)


def touch(path: Path) -> None:
    """Mark an entry as used now (pruning removes the least recently used)."""
    os.utime(path)


def prune(folder: Path, keep: int = MAX_ENTRIES) -> None:
    """Keep the ``keep`` most recently used entries of one chapter; remove leftovers of
    interrupted writes (``.tmp-*``, ``.old-*``) older than an hour."""
    entries = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        remove_entry(old)
    now = datetime.datetime.now().timestamp()
    for left in folder.glob(".*-*"):
        if left.is_dir() and now - left.stat().st_mtime > 3600:
            shutil.rmtree(left, ignore_errors=True)


# ----------------------------------------------------------------------------- prose


def _new_id(chapter: str, i: int) -> str:
    return hashlib.sha1(f"{chapter}-prose-{i}".encode()).hexdigest()[:8]


def splice_prose(executed, source, chapter: str):
    """The cached executed notebook with the chapter source's current markdown.

    Code cells (with their outputs) come from ``executed`` in order, papermill's injected
    parameters cell after the ``parameters`` cell; every other cell comes from ``source``.
    A markdown cell keeps the id of the executed notebook's cell at the same place among
    the markdown cells (new ones get an id derived from their place), so splicing the same
    prose twice gives the same bytes. The caller re-tidies the result (the profile banner).

    Raises:
        ValueError: the code cells of the two notebooks differ (the entry is not this code's).
    """
    def tags(c):
        return c.get("metadata", {}).get("tags", [])

    code = [c for c in executed.cells if c.cell_type == "code" and "injected-parameters" not in tags(c)]
    injected = [c for c in executed.cells if "injected-parameters" in tags(c)]
    old_prose = [c for c in executed.cells if c.cell_type != "code"]
    src_code = [c for c in source.cells if c.cell_type == "code"]
    if len(code) != len(src_code) or any(a.source != b.source for a, b in zip(code, src_code)):
        raise ValueError("the cached notebook's code cells differ from the chapter's")
    nb = copy.deepcopy(executed)
    cells, k, m = [], 0, 0
    for cell in source.cells:
        if cell.cell_type == "code":
            cells.append(copy.deepcopy(code[k]))
            k += 1
            if "parameters" in tags(cell):
                cells.extend(copy.deepcopy(injected))
        else:
            new = copy.deepcopy(cell)
            new["id"] = old_prose[m].get("id") if m < len(old_prose) and old_prose[m].get("id") else _new_id(chapter, m)
            m += 1
            cells.append(new)
    if injected and not any("injected-parameters" in tags(c) for c in cells):
        cells[0:0] = copy.deepcopy(injected)  # papermill puts it first when no cell is tagged parameters
    nb.cells = cells
    return nb
