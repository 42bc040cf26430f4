"""Execute chapters with papermill and render the book with Jupyter Book.

*Execute once, render many*: each chapter (a jupytext ``py:percent`` file in
``notebooks/``) is executed by papermill with the parameters of a profile into
``book/<chapter>.ipynb``; the book is then built from those executed notebooks with
execution off, strictly (``-W -n --keep-going``), and refused if any executed chapter
holds an error output.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import yaml

from . import errors, execution_cache
from .errors import ChapterError, ModelPackageMissingError, ParameterError, StudyError
from .results import RESULTS_ENV, STAGE_ENV, repo_root, results_dir, write_atomic

PROFILES_FILE = Path(__file__).with_name("profiles.yaml")
REQUIRED_PARAMETERS = ("model", "device", "dtype", "profile", "seed")


NOTEBOOKS_ENV = "GENDER_NEURONS_NOTEBOOKS"
BOOK_ENV = "GENDER_NEURONS_BOOK"
RUNS_ENV = "GENDER_NEURONS_RUNS"


def notebooks_dir() -> Path:
    """The chapter sources: ``$GENDER_NEURONS_NOTEBOOKS`` if set, else ``<repo>/notebooks``."""
    return Path(os.environ.get(NOTEBOOKS_ENV) or repo_root() / "notebooks")


def book_dir() -> Path:
    """Where executed chapters go: ``$GENDER_NEURONS_BOOK`` if set, else ``<repo>/book``."""
    return Path(os.environ.get(BOOK_ENV) or repo_root() / "book")


def runs_dir() -> Path:
    """Where a one-off ``run`` writes by default: ``$GENDER_NEURONS_RUNS`` if set, else
    ``<repo>/runs`` (executed chapters there, their results in ``runs/results``). Only
    ``book`` (``make book``) writes ``book/`` and the book's ``results/``, so an exploratory run
    with another model never leaves the book mixing two runs."""
    return Path(os.environ.get(RUNS_ENV) or repo_root() / "runs")


def chapters() -> list[str]:
    """Chapter names (file stems of ``notebooks/*.py``), in book order.

    Raises:
        StudyError: the chapter folder holds no chapters (names ``$GENDER_NEURONS_NOTEBOOKS``
            when that variable chose it).
    """
    d = notebooks_dir()
    found = sorted(p.stem for p in d.glob("[0-9][0-9]_*.py")) if d.is_dir() else []
    if not found:
        if os.environ.get(NOTEBOOKS_ENV):
            raise StudyError(
                f"{NOTEBOOKS_ENV}={os.environ[NOTEBOOKS_ENV]} holds no chapters (files like 00_name.py). "
                f"Point it at the checkout's notebooks/ folder, or unset it."
            )
        raise StudyError(f"No chapters (files like 00_name.py) in {d}; is this a complete checkout?")
    return found


def resolve_chapter(name: str) -> str:
    """A chapter name from its stem, its number (``"0"``, ``"00"``) or a unique prefix."""
    known = chapters()
    if name in known:
        return name
    stem = Path(name).stem
    matches = [c for c in known if c == stem]
    if not matches and stem.isdigit():
        matches = [c for c in known if c.split("_", 1)[0] == stem.zfill(2)]
    if not matches:
        matches = [c for c in known if c.startswith(stem)]
    if len(matches) == 1:
        return matches[0]
    raise StudyError(f"Unknown chapter {name!r}. The chapters are: {', '.join(known)} (a number like 0 also works).")


#: the keys a profile may have (``extends``: the profile it starts from; ``suites``: the
#: evaluation suites' presets, see :func:`suite_presets`)
PROFILE_KEYS = ("description", "extends", "defaults", "suites", "chapters")


def load_profiles() -> dict[str, Any]:
    return yaml.safe_load(PROFILES_FILE.read_text())


def suite_presets(suite: str) -> dict[str, dict[str, Any]]:
    """The size presets of one evaluation suite, by profile name, from ``profiles.yaml``.

    ``suite`` is ``"bias"`` (:data:`analysis_lib.benchmarks.SUITE_PROFILES`) or
    ``"capability"`` (:data:`analysis_lib.capability.PROFILES`); every profile with its own
    ``suites`` entry (``quick`` and ``full``) gives one preset, in file order. Lists become
    tuples (``stereoset_kinds``), so a preset is what the suites take as a setting.

    Raises:
        StudyError: no profile defines the suite.
    """
    presets = {}
    for name, p in load_profiles().items():
        sizes = ((p or {}).get("suites") or {}).get(suite)
        if sizes is not None:
            presets[name] = {k: tuple(v) if isinstance(v, list) else v for k, v in sizes.items()}
    if not presets:
        raise StudyError(f"No profile in {PROFILES_FILE.name} has `suites: {suite}:` sizes.")
    return presets


def _profile_chain(profile: str, profiles: dict[str, Any]) -> list[str]:
    """``[profile, the profile it extends, ...]``, checked: known names, no cycle, known keys."""
    chain: list[str] = []
    name = profile
    while name is not None:
        if name not in profiles:
            where = f" (extended by profile {chain[-1]!r})" if chain else ""
            raise ParameterError(
                f"Unknown profile {name!r}{where}; the profiles in {PROFILES_FILE.name} are: {', '.join(profiles)}."
            )
        if name in chain:
            raise ParameterError(
                f"Profile {profile!r} in {PROFILES_FILE.name} extends itself ({' -> '.join([*chain, name])}); "
                "remove one of the `extends` keys."
            )
        p = profiles[name] or {}
        unknown = [k for k in p if k not in PROFILE_KEYS]
        if unknown:
            raise ParameterError(
                f"Profile {name!r} in {PROFILES_FILE.name} has unknown key(s) {', '.join(map(repr, unknown))}; "
                f"a profile has {', '.join(PROFILE_KEYS)}."
            )
        chain.append(name)
        name = p.get("extends")
    return chain


def profile_parameters(profile: str, chapter: str) -> dict[str, Any]:
    """The parameters a profile gives a chapter.

    A profile's defaults, then the chapter's own entry. A profile that ``extends`` another
    (``gpu`` extends ``full``) starts from the parameters that profile gives the chapter, and
    its own defaults and chapter entry override them (a list or mapping is replaced whole), so
    each size lives in one place.

    Raises:
        ParameterError: the profile (or one it extends) is unknown, or the profiles extend each
            other in a cycle.
    """
    profiles = load_profiles()
    params: dict[str, Any] = {}
    for name in reversed(_profile_chain(profile, profiles)):
        p = profiles[name] or {}
        params.update(p.get("defaults") or {})
        params.update((p.get("chapters") or {}).get(chapter) or {})
    return params


def size_profile(profile: str) -> str:
    """The profile whose sizes ``profile`` runs: the last of its ``extends`` chain (``gpu`` ->
    ``full``; ``quick`` and ``full`` are their own). The bias-suite presets
    (:data:`analysis_lib.benchmarks.SUITE_PROFILES`) and the book's quick-profile banner are
    keyed by it."""
    return _profile_chain(profile, load_profiles())[-1]


def resolve_profile(chapter: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """The chapter's sizes left ``None`` in ``namespace``, from the profile it names.

    A size that differs between the profiles is ``None`` in the chapter's parameters cell;
    the chapter's first cell calls ``globals().update(resolve_profile(CHAPTER, globals()))``
    so that plain ``papermill -p profile full`` runs the full sizes, exactly as
    ``python -m analysis_lib run --profile full`` does (which passes every size explicitly).

    Raises:
        ParameterError: the profile is unknown.
    """
    given = profile_parameters(str(namespace.get("profile", "quick")), chapter)
    return {k: v for k, v in given.items() if k in namespace and namespace[k] is None and k != "profile"}


def parameter_reference(chapter: str, declared: dict[str, Any]) -> dict[str, Any]:
    """The declared parameters with each ``None`` (the profile's size) replaced by the quick
    profile's value: the type every given value is checked against."""
    quick = profile_parameters("quick", chapter)
    return {k: quick.get(k) if v is None else v for k, v in declared.items()}


def source_notebook(chapter: str):
    """The chapter's jupytext source as an nbformat notebook."""
    import jupytext

    return jupytext.read(notebooks_dir() / f"{chapter}.py")


class _UnknownParameterFilter:
    """Drops papermill's "Passed unknown parameter" warning (see :func:`_quiet_papermill`)."""

    def filter(self, record) -> bool:
        return not str(record.msg).startswith("Passed unknown parameter")


def _quiet_papermill() -> None:
    """Silence papermill's two misleading parameter warnings.

    papermill's own line-based parameter parser misreads literals containing "=" (e.g.
    ``sums = ["3+5="]``): it warns about them and calls such a parameter unknown. The
    parameters are read with ``ast`` and checked here (:func:`declared_parameters`,
    :func:`validate_parameters`) before papermill sees them, so both warnings are dropped.
    """
    import logging

    logging.getLogger("papermill.translators").setLevel(logging.ERROR)
    pm_log = logging.getLogger("papermill")
    if not any(isinstance(f, _UnknownParameterFilter) for f in pm_log.filters):
        pm_log.addFilter(_UnknownParameterFilter())


def declared_parameters(nb) -> dict[str, Any]:
    """Names and default values of the literal-only cell tagged ``parameters``."""
    import ast

    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise StudyError(f"A chapter needs exactly one cell tagged 'parameters' (found {len(cells)}).")
    out: dict[str, Any] = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring/comment string
        if not (isinstance(node, (ast.Assign, ast.AnnAssign))):
            raise StudyError("The parameters cell may only assign literals (name = value).")
        target = node.targets[0] if isinstance(node, ast.Assign) else node.target
        try:
            out[target.id] = ast.literal_eval(node.value)
        except ValueError:
            raise StudyError(f"Parameter {target.id!r} is not a literal; the parameters cell must be literal-only.") from None
    return out


def parse_cli_parameters(pairs: Iterable[str]) -> dict[str, Any]:
    """``["seed=3", "model=gemma3-270m"]`` → ``{"seed": 3, "model": "gemma3-270m"}`` (YAML literals)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ParameterError(f"Parameter {pair!r} is not of the form key=value (e.g. -p seed=1).")
        key, raw = pair.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ParameterError(
                f"The value of -p {pair!r} is not a valid YAML literal ({problem}). Quote the whole "
                f"pair and close every bracket, e.g. -p '{key.strip()}=[1, 2]' or -p '{key.strip()}=\"text\"'."
            ) from None
    return out


def validate_parameters(chapter: str, declared: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Check names and types of the parameters against the chapter's declared defaults."""
    import difflib

    unknown = [k for k in given if k not in declared]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, list(declared), n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ParameterError(
            f"Chapter {chapter} has no parameter {', '.join(hints)}. Its parameters are: {', '.join(declared)}."
        )
    out = {}
    for k, v in given.items():
        default = declared[k]
        ok = (
            default is None
            or isinstance(v, type(default))
            or (isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool))
        )
        if default is not None and isinstance(default, bool) != isinstance(v, bool):
            ok = False
        if not ok:
            raise ParameterError(
                f"Parameter {k!r} of chapter {chapter} must be a {type(default).__name__} like {default!r}, not {v!r}."
            )
        value = float(v) if isinstance(default, float) else v
        if _is_count(default) and isinstance(value, (int, float)) and value < 0:
            raise ParameterError(
                f"Parameter {k!r} of chapter {chapter} must be 0 or more (like its default {default!r}), not {v!r}."
            )
        out[k] = value
    return out


def _is_count(default: Any) -> bool:
    """A parameter whose default is a non-negative number is a size, count or rate: never negative."""
    return isinstance(default, (int, float)) and not isinstance(default, bool) and default >= 0


def check_device(device: Any) -> None:
    """Refuse a device this machine does not have, before a chapter starts.

    Raises:
        ParameterError: ``cuda`` without a CUDA build or GPU, ``mps`` without Apple's backend,
            or a name torch does not know.
    """
    import torch

    name = str(device or "cpu")
    try:
        kind = torch.device(name).type
    except (RuntimeError, ValueError):
        raise ParameterError(f"Unknown device {name!r}; use cpu, cuda (or cuda:N) or mps.") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ParameterError(
            f"device={name!r} was asked for, but this machine has no usable CUDA GPU (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). Use -p device=cpu, or run on a "
            "GPU machine with a CUDA build of torch."
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ParameterError(f"device={name!r} was asked for, but Apple's MPS backend is not available here; use cpu.")


#: chapter parameters that name further models a chapter loads (besides ``model``)
MODEL_LIST_PARAMETERS = ("compare_models", "replicate_models", "profile_models")


def check_requirements(profile: str, params_by_chapter: dict[str, dict[str, Any]],
                       given: dict[str, Any] | None = None) -> None:
    """Refuse, before any chapter runs, what this machine cannot run: a device it lacks
    (:func:`check_device`) or a built-in model whose weight packages are not installed.

    Args:
        profile: the profile the parameters come from (named in the messages).
        params_by_chapter: ``{chapter: its resolved parameters}``.
        given: the parameters given on the command line (a device given there is not the
            profile's, so the message does not suggest another profile).

    Raises:
        ParameterError: a device is not available here.
        ModelPackageMissingError: a model some chapter loads is not installed and has no float
            cache (names the chapters and the install command).
    """
    from .models import BUILTIN_MODELS, cache_problems, gguf_parts  # local: keeps torch out of the CLI's start-up

    given = given or {}
    for device in dict.fromkeys(str(p.get("device") or "cpu") for p in params_by_chapter.values()):
        try:
            check_device(device)
        except ParameterError as exc:
            if "device" in given:  # the user's own choice: check_device's message says it all
                raise
            raise ParameterError(
                f"{exc} The {profile} profile runs every chapter on device={device!r}; without a GPU run the same "
                "sizes with `--profile full` (`make book`), or this profile on the CPU with `-p device=cpu` (slow)."
            ) from None
    users: dict[str, list[str]] = {}
    for chapter, params in params_by_chapter.items():
        names = [params.get("model")]
        for key in MODEL_LIST_PARAMETERS:
            value = params.get(key)
            names += list(value) if isinstance(value, (list, tuple)) else []
        for name in dict.fromkeys(n for n in names if isinstance(n, str) and n in BUILTIN_MODELS):
            users.setdefault(name, []).append(chapter.split("_", 1)[0])
    for name, chapters_ in users.items():
        try:
            gguf_parts(name)
        except ModelPackageMissingError as exc:
            if not cache_problems(name, full=False):  # its float cache is there (checked in full on load)
                continue
            raise ModelPackageMissingError(
                f"Chapter(s) {', '.join(chapters_)} of the {profile} profile load model {name!r}, which is not "
                f"installed. {exc}"
            ) from None


def _failing_cell(path: Path, cell_index: int) -> str:
    """'code cell N (`first line`)' of the cell holding the error, counted in the chapter source.

    Papermill's own ``cell_index`` counts its injected cells, so the cell is found by its
    error output instead; ``cell_index`` is the fallback.
    """
    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # noqa: BLE001 - the notebook may not have been written
        return f"cell {cell_index}"
    n = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "injected-parameters" in cell.metadata.get("tags", []):
            continue
        n += 1
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            first = next((line for line in cell.source.splitlines() if line.strip()), "")
            return f"code cell {n} (`{first[:60]}`)"
    return f"cell {cell_index}"


#: the study's own errors (a problem of input or environment that the message explains)
_USER_ERRORS = {n for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, StudyError)}


def _failure_advice(ename: str, evalue: str, params: dict[str, Any]) -> str:
    """What to fix after a failed chapter: the parameter, device or environment when that is the
    cause (the study's own errors say what to do), the cell otherwise."""
    text = f"{ename}: {evalue}"
    device = str(params.get("device", "cpu"))
    if ename in _USER_ERRORS:
        return "the message above names the fix (a parameter, the model or the environment, not the cell);"
    if ename in {"OutOfMemoryError", "MemoryError"} or "out of memory" in text.lower() or "CUDA" in text:
        return (f"this is the device or its memory (device={device!r}, model={params.get('model')!r}): try a "
                "smaller profile or model, -p device=cpu, or a machine with more memory;")
    if ename in {"ModuleNotFoundError", "ImportError"}:
        return "this is the environment (a missing package): run `make install`;"
    if ename in {"PermissionError", "OSError", "FileNotFoundError"} and "Errno" in text:
        return "this is the environment (a file or folder named above): check that it exists and is writable;"
    return "fix the cell, or a parameter it uses (see `python -m analysis_lib chapters`);"


_PROGRESS_LINE = re.compile(r"\d+%\|.*\|\s*\d+/\d+|\|\s*\d+/\d+ \[[\d:?]")
_TQDM_NOISE = ("TqdmWarning: IProgress not found", "from .autonotebook import tqdm as notebook_tqdm")


def strip_progress_outputs(nb) -> int:
    """Drop tqdm's progress bars (and its "IProgress not found" warning) from the outputs of an
    executed notebook, in place; other output is kept. Returns the number of outputs removed."""
    removed = 0
    for cell in nb.cells:
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:  # a tqdm.auto widget
                removed += 1
                continue
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = out.get("text", "")
                lines = [ln for ln in re.split(r"\r\n|\r|\n", text) if ln.strip()]
                rest = [ln for ln in lines if not _PROGRESS_LINE.search(ln) and not any(n in ln for n in _TQDM_NOISE)]
                if len(rest) < len(lines):
                    if not rest:
                        removed += 1
                        continue
                    out["text"] = "\n".join(rest) + "\n"
            kept.append(out)
        if "outputs" in cell:
            cell["outputs"] = kept
    return removed


def profile_banner(profile: str) -> str:
    """The note at the top of a chapter executed with a profile other than ``full``."""
    return (
        f"```{{admonition}} Executed with the {profile} profile\n"
        ":class: warning\n"
        f"This page was executed with the **{profile}** profile: small seeded subsets on the default "
        "model, so its numbers and verdicts are rough and may differ from the published book's "
        "(the full profile, `make book`). The {doc}`execution_status` page says how each chapter "
        "was run.\n"
        "```"
    )


def tidy_executed(nb, profile: str) -> None:
    """Prepare an executed chapter for the book, in place: hide papermill's injected-parameters
    cell, drop progress-bar outputs, and put a banner under the title of a page that was not
    executed with the full profile."""
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    strip_progress_outputs(nb)
    if size_profile(profile) != "full":
        for cell in nb.cells:
            if cell.cell_type == "markdown" and re.search(r"(?m)^# ", cell.source):
                cell.source = re.sub(r"(?m)^(# .*)$", lambda m: f"{m.group(1)}\n\n{profile_banner(profile)}",
                                     cell.source, count=1)
                break


def _tidy_executed_file(path: Path, profile: str) -> None:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    tidy_executed(nb, profile)
    nbformat.write(nb, path)


def error_outputs(path: Path) -> list[str]:
    """Descriptions of error outputs in an executed notebook (none allowed in the book)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
            elif out.get("output_type") == "stream" and "Traceback (most recent call last)" in out.get("text", ""):
                found.append(f"cell {i}: a traceback printed to {out.get('name')}")
    return found


def chapter_parameters(
    chapter: str, profile: str = "quick", parameters: dict[str, Any] | None = None, *, nb=None
) -> tuple[str, dict[str, Any]]:
    """The profile and the checked parameters :func:`run_chapter` hands papermill.

    ``parameters`` override the profile's values; a ``profile`` among them chooses the
    profile itself (``-p profile=full`` means the full sizes, not only the label).
    """
    nb = nb if nb is not None else source_notebook(chapter)
    declared = declared_parameters(nb)
    missing = [k for k in REQUIRED_PARAMETERS if k not in declared]
    if missing:
        raise StudyError(f"Chapter {chapter}'s parameters cell lacks {', '.join(missing)}.")
    given = dict(parameters or {})
    if "profile" in given:
        profile = str(given["profile"])
    reference = parameter_reference(chapter, declared)
    params = {k: v for k, v in profile_parameters(profile, chapter).items() if k in declared}
    params.update(validate_parameters(chapter, reference, given))
    return profile, validate_parameters(chapter, reference, params)


def run_chapter(
    chapter: str,
    *,
    profile: str = "quick",
    parameters: dict[str, Any] | None = None,
    output_dir: Path | None = None,
    results: Path | None = None,
    progress: bool = False,
) -> Path:
    """Execute one chapter through papermill into ``book/<chapter>.ipynb``.

    Args:
        chapter: name, number or unique prefix of the chapter.
        profile: the parameter profile (``quick`` or ``full``).
        parameters: overrides of single parameters (checked against the chapter's cell).
        output_dir: where the executed notebook goes (default ``book/``).
        results: the results folder the chapter writes into and reads other chapters' results
            from (default :func:`~analysis_lib.results.results_dir`, the book's).
        progress: show papermill's progress bar.

    Returns:
        Path of the executed notebook.

    Raises:
        ChapterError: a cell failed; names the chapter, the cell and the error. The partial
            notebook is kept under ``build/failed/`` beside the book folder, never in ``book/``.
    """
    chapter = resolve_chapter(chapter)
    out_dir = _writable_dir(Path(output_dir or book_dir()), BOOK_ENV if output_dir is None else None)
    if results is None:
        results = _writable_dir(results_dir(), RESULTS_ENV)
    else:
        results = _writable_dir(Path(results).resolve(), None)
    return _execute(chapter, profile=profile, parameters=parameters, out_dir=out_dir, results=results,
                    progress=progress).path


@dataclasses.dataclass
class _Executed:
    """What one execution of a chapter did (for the execution cache)."""

    path: Path  # the executed notebook
    profile: str
    params: dict[str, Any]
    seconds: float
    published: list[str]  # the results files (or folders) it published
    removed: list[str]  # the results files that were there before and are gone after it
    record: dict[str, Any]  # how and when it was executed (:func:`_execution_record`)


def _results_names(results: Path) -> set[str]:
    """The published results in a results folder (its locks and staging folders left out)."""
    return {p.name for p in results.iterdir() if not p.name.startswith(".")}


def _execute(chapter: str, *, profile: str, parameters: dict[str, Any] | None, out_dir: Path, results: Path,
             progress: bool, nb=None, after_publish=None, key: str | None = None) -> _Executed:
    """:func:`run_chapter`'s work, for a resolved chapter and writable folders.

    ``after_publish(info)``, if given, is called after the results and the notebook are
    published, still holding the chapter's lock (the execution cache stores them there);
    ``key`` is the chapter's execution-cache key, recorded in the execution log.
    """
    import papermill as pm

    _quiet_papermill()
    t0 = time.perf_counter()
    nb = nb if nb is not None else source_notebook(chapter)
    profile, params = chapter_parameters(chapter, profile, parameters, nb=nb)
    check_requirements(profile, {chapter: params}, parameters)
    final = out_dir / f"{chapter}.ipynb"
    with _chapter_lock(results, chapter), tempfile.TemporaryDirectory(prefix="chapter-") as tmp:
        before = _results_names(results)
        stage = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{chapter}-", dir=results))
        src = Path(tmp) / f"{chapter}.src.ipynb"
        dst = Path(tmp) / f"{chapter}.ipynb"
        import nbformat

        nb = copy.deepcopy(nb)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, src)
        _tcp_note()
        env_before = {k: os.environ.get(k) for k in ("PYTHONHASHSEED", STAGE_ENV, RESULTS_ENV)}
        os.environ.setdefault("PYTHONHASHSEED", "0")
        os.environ[STAGE_ENV] = str(stage)  # the kernel inherits it: the chapter writes into the stage
        os.environ[RESULTS_ENV] = str(results)  # ... and reads other chapters' results from here
        try:
            pm.execute_notebook(
                str(src),
                str(dst),
                parameters=params,
                kernel_name="python3",
                progress_bar={"desc": chapter} if progress else False,
                cwd=str(repo_root()),
                # ipykernel warns on every start that its local TCP link is unencrypted; said once below
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
            )
            errors = error_outputs(dst)
            if errors:
                raise ChapterError(f"Chapter {chapter} produced error outputs: {'; '.join(errors)}.")
            _tidy_executed_file(dst, profile)
            published = sorted(p.name for p in stage.iterdir())
            _publish(stage, results)
            fd, tmp_final = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=out_dir)
            os.close(fd)
            try:
                shutil.copy(dst, tmp_final)
                os.replace(tmp_final, final)
            finally:
                if os.path.exists(tmp_final):
                    os.unlink(tmp_final)
            seconds = time.perf_counter() - t0
            info = _Executed(final, profile, params, seconds, published, sorted(before - _results_names(results)),
                             _execution_record(profile, params, seconds))
            if after_publish is not None:
                after_publish(info)
        except KeyboardInterrupt:
            _stop_kernels(stage)  # else the kernel runs on, and papermill's thread waits for it at exit
            raise
        except pm.PapermillExecutionError as exc:
            failed = out_dir.parent / "build" / "failed" / f"{chapter}.ipynb"  # beside the book folder
            failed.parent.mkdir(parents=True, exist_ok=True)
            if dst.exists():
                shutil.copy(dst, failed)
            where = _failing_cell(dst, exc.cell_index)
            raise ChapterError(
                f"Chapter {chapter} failed in {where} ({exc.ename}: {exc.evalue}). "
                f"The partial notebook is at {failed}; {_failure_advice(exc.ename, exc.evalue, params)} "
                f"then run `python -m analysis_lib run {chapter} --profile {profile}` again. "
                "Nothing of this run was published to results/ or the book."
            ) from None
        finally:
            for k, v in env_before.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            shutil.rmtree(stage, ignore_errors=True)
    _record_execution(out_dir, chapter, info.record, outputs=info.published, key=key)
    return info


_TCP_NOTE = []


def _tcp_note() -> None:
    """Say once per process what ipykernel's per-kernel warning said at every chapter."""
    if not _TCP_NOTE:
        _TCP_NOTE.append(True)
        print("note: each chapter runs in a Jupyter kernel that talks to this process over local TCP without "
              "encryption (ipykernel's warning, said once here)", file=sys.stderr, flush=True)


STAGE_PREFIX = ".run-"
LOCK_SUFFIX = ".lock"


def _stop_kernels(stage: Path) -> None:
    """Kill this process's chapter kernel(s) of the run staged in ``stage`` (after Ctrl-C).

    The kernel is a child of this process whose environment names the run's staging folder;
    found through ``/proc`` (Linux; elsewhere nothing is done and the kernel ends with its cell).
    """
    import signal

    mark = f"{STAGE_ENV}={stage}".encode()
    me = str(os.getpid())
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
            if ppid == me and mark in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, IndexError, ValueError):
            continue


def _writable_dir(path: Path, env: str | None) -> Path:
    """``path`` as a writable folder (created if missing), else a clear error naming ``env``."""
    where = f"{path} (${env})" if env and os.environ.get(env) else str(path)
    fix = f"point {env} at a writable folder" if env else "choose a writable folder"
    if path.exists() and not path.is_dir():
        raise StudyError(f"The output path {where} is not a directory; {fix}.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StudyError(f"Cannot write into {where} ({exc.strerror or exc}); {fix}.") from None
    return path


class _chapter_lock:
    """One run of a chapter at a time per results folder: a ``flock`` on
    ``results/.<chapter>.lock`` (released by the kernel when the process ends, even when it
    is killed). A second run is refused with a message naming the first. Holding the lock,
    leftover staging folders of interrupted runs of the chapter are removed."""

    def __init__(self, results: Path, chapter: str):
        self.path = results / f".{chapter}{LOCK_SUFFIX}"
        self.results, self.chapter = results, chapter
        self.fd: int | None = None

    def __enter__(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                other = json.loads(os.read(fd, 4096) or b"{}")
            except ValueError:
                other = {}
            os.close(fd)
            raise StudyError(
                f"Chapter {self.chapter} is already running into {self.results} (process {other.get('pid', '?')}, "
                f"started {other.get('started', '?')}: {other.get('command', '?')}). Wait for it to finish, or "
                f"stop that process; two runs at once would mix their results."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "started": datetime.datetime.now().isoformat(timespec="seconds"),
                                 "command": " ".join(sys.argv)[:300]}).encode())
        self.fd = fd
        for old in self.results.glob(f"{STAGE_PREFIX}{self.chapter}-*"):
            shutil.rmtree(old, ignore_errors=True)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        return False


def _publish(stage: Path, results: Path) -> None:
    """Move a finished run's files from its staging folder into ``results`` (renames on one
    filesystem; a folder replaces the previous one of the same name)."""
    for src in sorted(stage.iterdir()):
        target = results / src.name
        if src.is_dir():
            trash = None
            if target.exists():
                trash = Path(tempfile.mkdtemp(prefix=f".old-{src.name}-", dir=results))
                os.replace(target, trash / src.name)
            os.replace(src, target)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(src, target)


EXECUTION_LOG = "_execution.json"


def _now() -> str:
    """The time an execution-log entry records (UTC, to the minute)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _execution_record(profile: str, params: dict[str, Any], seconds: float) -> dict[str, Any]:
    """How and when a chapter was executed (kept in the log and in its execution-cache entry)."""
    import platform

    return {
        "profile": profile,
        "model": params.get("model"),
        "device": params.get("device"),
        "seconds": round(seconds, 1),
        "date": _now(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }


def read_execution_log(out_dir: Path) -> dict[str, Any]:
    """The execution log of a book folder (``_execution.json``; empty when there is none)."""
    path = Path(out_dir) / EXECUTION_LOG
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}  # a damaged log: the status page then says "not executed" until the next book


def _record_execution(out_dir: Path, chapter: str, record: dict[str, Any], *, outputs: list[str],
                      key: str | None = None, reused: bool = False) -> None:
    """Record a chapter in the book folder's execution log: how and when it was executed
    (``record``, from :func:`_execution_record`; for a reuse, the stored execution's), the
    results files it published (``outputs``: later chapters' cache keys hash them) and its
    execution-cache ``key``."""
    log = read_execution_log(out_dir)
    entry = {**record, "status": "executed"}
    if reused:
        entry.update(status="reused", reused=_now())
    entry.update(outputs=list(outputs), key=key)
    log[chapter] = entry
    write_atomic(out_dir / EXECUTION_LOG, json.dumps(log, indent=1, sort_keys=True))


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` atomically unless the file already holds it (Sphinx's incremental build
    re-renders a page whose source file is newer than its last build)."""
    if not (path.is_file() and path.read_text() == text):
        write_atomic(path, text)


def write_execution_status(out_dir: Path | None = None) -> Path:
    """Write ``book/execution_status.md`` from the execution log (the book's status page): how
    and when each chapter was actually executed, and whether this book reused it from the
    execution cache."""
    out_dir = Path(out_dir or book_dir())
    log = read_execution_log(out_dir)
    lines = [
        "# Execution status",
        "",
        "Every chapter was executed by papermill before the book was rendered (execution is off",
        "during the build). This table is written by `python -m analysis_lib book`. A chapter",
        "whose inputs (its code, its parameters, `analysis_lib`, the results of earlier chapters,",
        "the data checksums, the model weights and the package versions) were unchanged since an",
        "earlier execution was *reused* from the execution cache rather than executed again:",
        "\"executed\" is when its notebook and results were computed, \"this book\" says which.",
        "",
        "| chapter | profile | model | run on | time (s) | date | this book |",
        "|---|---|---|---|---:|---|---|",
    ]
    for c in chapters():
        e = log.get(c)
        name = c.replace("_", " ")  # words, so that the column can wrap in a narrow page
        if e is None:
            lines.append(f"| {name} | – | – | – | – | – | not executed |")
            continue
        status = f"reused {e.get('reused', '')} (inputs unchanged)" if e.get("status") == "reused" else "executed"
        lines.append(
            f"| [{name}]({c}.ipynb) | {e['profile']} | {e['model']} | {e['device']} ({e['machine']}) "
            f"| {e['seconds']} | {e['date']} | {status} |"
        )
    out = out_dir / "execution_status.md"
    _write_if_changed(out, "\n".join(lines) + "\n")
    return out


def build_book(*, strict: bool = True, root: Path | None = None) -> Path:
    """Render the book from the executed chapters with execution off.

    Args:
        strict: pass ``-W -n --keep-going`` (warnings are errors).
        root: a directory holding ``_config.yml``, ``_toc.yml`` and ``book/`` (default: the
            checkout); the HTML goes to ``<root>/book/_build/html``.

    Raises:
        ChapterError: a chapter has not been executed or holds an error output.
        StudyError: ``jupyter-book build`` failed (its log is printed).
    """
    if root is None and os.environ.get(BOOK_ENV):
        if book_dir().name != "book":
            raise StudyError(
                f"{BOOK_ENV}={book_dir()} must be a folder named 'book' to render the book from it (the table "
                "of contents names book/<chapter>); the book's sources are copied beside it."
            )
        root = prepare_book_root(book_dir().parent)
    root = Path(root or repo_root()).resolve()  # jupyter-book runs with cwd=root
    out_dir = root / "book"
    missing = [c for c in chapters() if not (out_dir / f"{c}.ipynb").is_file()]
    if missing:
        raise ChapterError(
            f"Chapters not executed yet: {', '.join(missing)}. Run `python -m analysis_lib book` "
            "(or `run CHAPTER` for each) first."
        )
    for c in chapters():
        errs = error_outputs(out_dir / f"{c}.ipynb")
        if errs:
            raise ChapterError(f"Executed chapter {c} holds error outputs ({'; '.join(errs)}); re-run it.")
    write_execution_status(out_dir)
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(root), "--path-output", str(out_dir)]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-20000:] + proc.stderr[-20000:])
        raise StudyError(f"jupyter-book build failed (exit {proc.returncode}); its output is above.")
    html = out_dir / "_build" / "html"
    print(f"Book rendered to {html} in {time.perf_counter() - t0:.0f} s.")
    return html


def _copy_if_changed(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` unless ``dst`` is ``src`` or already holds its bytes (an unchanged
    copy keeps its modification time, so Sphinx's incremental build does not re-render it)."""
    if dst.exists() and (os.path.samefile(src, dst) or dst.read_bytes() == src.read_bytes()):
        return
    shutil.copy(src, dst)


def prepare_book_root(root: Path) -> Path:
    """Copy the book's sources (config, toc, ``_static`` styles, prose pages) into ``root`` for a
    separate build."""
    root = Path(root)
    (root / "book").mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        _copy_if_changed(repo_root() / name, root / name)
    static = repo_root() / "_static"  # the book's CSS (jupyter-book includes every .css in it)
    if static.is_dir() and not ((root / "_static").exists() and os.path.samefile(static, root / "_static")):
        shutil.copytree(static, root / "_static", dirs_exist_ok=True)
    prose = repo_root() / "book"  # the prose pages are sources of the checkout
    for src in prose.iterdir():
        if src.is_file() and src.suffix in {".md", ".bib", ".png", ".svg"} and src.name != "execution_status.md":
            _copy_if_changed(src, root / "book" / src.name)
    return root


SOLUTION_TAG = "solution"
STUDENT_TAG = "student"


_CHECK_CALL = re.compile(r"^checks\.check_\w+\(.*\)\s*$")


def student_notebook(nb):
    """The student version of an executed chapter: solution cells removed, stubs shown.

    Cells tagged ``solution`` (the worked solution, including the markdown cells that open and
    close a ``{solution-start}``/``{solution-end}`` block) are dropped; the ``checks.check_*``
    calls of a dropped code cell stay, as a cell of their own (not executed), so a learner runs
    the check on their own implementation and sees its ✔/✘ line. Cells tagged ``student``
    (stubs such as ``def icat(lms, ss): ...``) are hidden in the full edition by a
    ``remove-cell`` tag, which the student edition removes.
    """
    import copy as _copy

    from nbformat.v4 import new_code_cell

    nb = _copy.deepcopy(nb)
    kept = []
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if SOLUTION_TAG in tags:
            # the solution goes, its check calls stay: a learner runs them on their own code
            calls = [ln for ln in cell.source.splitlines() if _CHECK_CALL.match(ln)] if cell.cell_type == "code" else []
            if calls:
                kept.append(new_code_cell("\n".join(calls), metadata={"tags": ["student-check"]}))
            continue
        if STUDENT_TAG in tags and "remove-cell" in tags:
            tags.remove("remove-cell")
        kept.append(cell)
    nb.cells = kept
    return nb


def build_student_edition(root: Path, source_book: Path | None = None) -> Path:
    """Write the student edition (notebooks without solutions) into ``root`` and render it.

    Args:
        root: output directory; gets ``_config.yml``, ``_toc.yml``, ``book/`` and the HTML
            under ``book/_build/html``.
        source_book: the directory holding the executed chapters (default ``book/``).
    """
    import nbformat

    # absolute: jupyter-book runs with the output folder as its working directory, so a relative
    # ``--out student`` would be looked up inside itself
    root = prepare_book_root(Path(root).resolve())
    source_book = Path(source_book or book_dir()).resolve()
    for c in chapters():
        src = source_book / f"{c}.ipynb"
        if not src.is_file():
            raise ChapterError(f"Chapter {c} is not executed in {source_book}; run `python -m analysis_lib book` first.")
        nbformat.write(student_notebook(nbformat.read(src, as_version=4)), root / "book" / f"{c}.ipynb")
    log = source_book / EXECUTION_LOG
    if log.is_file():
        shutil.copy(log, root / "book" / EXECUTION_LOG)
    config = root / "_config.yml"
    config.write_text(config.read_text().replace("title: \"", "title: \"Student edition: ", 1))
    return build_book(root=root)


@dataclasses.dataclass
class BookChapter:
    """What :func:`update_book_chapters` did with one chapter."""

    chapter: str
    action: str  # "executed" or "reused"
    reason: str  # why it was executed ("inputs unchanged" for a reuse)
    path: Path  # the book's executed notebook
    seconds: float  # wall-clock time of this step


def _copy_into(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)


def _reuse(chapter: str, key: str, entry: Path, nb, profile: str, out_dir: Path, results: Path) -> list[str]:
    """Publish a chapter's execution-cache entry as if it had just been executed.

    Holding the chapter's lock: the entry is verified (every file against its sha256), its
    results go through a staging folder and :func:`_publish` like an execution's, the results
    files the execution removed are removed, and the executed notebook (with the source's
    current prose spliced in when only the prose changed) is written when its bytes differ
    from the book's.

    Returns:
        The entry's problems (nothing is published then); empty on success.
    """
    import nbformat

    with _chapter_lock(results, chapter), tempfile.TemporaryDirectory(prefix="chapter-") as tmp:
        problems = execution_cache.entry_problems(entry, key)
        if problems:
            return problems
        meta = execution_cache.read_entry(entry)
        notebook = entry / execution_cache.NOTEBOOK_FILE
        if meta.get("prose") != execution_cache.prose_digest(nb):
            try:
                spliced = execution_cache.splice_prose(nbformat.read(notebook, as_version=4), nb, chapter)
            except ValueError as exc:
                return [str(exc)]
            tidy_executed(spliced, profile)
            notebook = Path(tmp) / f"{chapter}.ipynb"
            nbformat.write(spliced, notebook)
        stage = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{chapter}-", dir=results))
        try:
            for src in sorted((entry / execution_cache.RESULTS_FOLDER).iterdir()):
                _copy_into(src, stage / src.name)
            _publish(stage, results)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        for name in meta.get("removed", []):
            gone = results / name
            if gone.is_dir():
                shutil.rmtree(gone)
            elif gone.exists():
                gone.unlink()
        final = out_dir / f"{chapter}.ipynb"
        data = notebook.read_bytes()
        if not (final.is_file() and final.read_bytes() == data):
            fd, tmp_final = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=out_dir)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp_final, final)
            finally:
                if os.path.exists(tmp_final):
                    os.unlink(tmp_final)
        execution_cache.touch(entry)
    _record_execution(out_dir, chapter, meta["executed"], outputs=meta.get("published", []), key=key, reused=True)
    return []


def update_book_chapters(
    profile: str = "quick", *, only: list[str] | None = None, progress: bool = False, out_dir: Path | None = None,
    parameters: dict[str, Any] | None = None, force: bool = False,
) -> list[BookChapter]:
    """Bring the book's executed chapters up to date, reusing the execution cache.

    For each chapter (in book order, or ``only`` these) the key of its inputs is computed
    (:mod:`analysis_lib.execution_cache`); a verified entry of that key is republished, else
    the chapter is executed and stored under the key. One line per chapter says which, and
    why a chapter was executed.

    Args:
        profile, only, progress, parameters: as for :func:`run_book`.
        out_dir: the book folder (default :func:`book_dir`); the store is its ``.execution_cache``.
        force: execute every chapter, whatever the cache holds (the new executions replace
            the entries of their keys).
    """
    out_dir = _writable_dir(Path(out_dir or book_dir()), BOOK_ENV if out_dir is None else None)
    results = _writable_dir(results_dir(), RESULTS_ENV)
    todo = [resolve_chapter(c) for c in (only or chapters())]
    sources = {c: source_notebook(c) for c in todo}
    resolved = {c: chapter_parameters(c, profile, parameters, nb=sources[c]) for c in todo}
    # the device and the models of every chapter, before the first one runs or is reused
    check_requirements(resolved[todo[0]][0] if todo else profile, {c: p for c, (_, p) in resolved.items()},
                       parameters)
    environment = execution_cache.environment_inputs()
    done = []
    for i, c in enumerate(todo, 1):
        t0 = time.perf_counter()
        nb = sources[c]
        prof, params = resolved[c]
        log = read_execution_log(out_dir)
        upstream = execution_cache.upstream_files(c, chapters(), log, results)
        inputs = execution_cache.chapter_inputs(nb, params, environment, upstream)
        key = execution_cache.key_of(inputs)
        entry = execution_cache.entry_dir(out_dir, c, key)
        label = f"{c} ({i}/{len(todo)}, {prof} profile)"
        if force:
            reason = "--force"
        elif entry.is_dir():
            problems = _reuse(c, key, entry, nb, prof, out_dir, results)
            if not problems:
                done.append(BookChapter(c, "reused", "inputs unchanged", out_dir / f"{c}.ipynb",
                                        time.perf_counter() - t0))
                e = read_execution_log(out_dir)[c]
                print(f"{label}: reused (inputs unchanged; executed {e['date']} in {e['seconds']:.0f} s)", flush=True)
                continue
            execution_cache.remove_entry(entry)
            print(f"note: the execution-cache entry of {c} ({entry}) is damaged ({'; '.join(problems)}); it was "
                  "removed and the chapter is executed again.", file=sys.stderr, flush=True)
            reason = "cache entry damaged"
        else:
            reason = execution_cache.change_reason(
                execution_cache.latest_inputs(out_dir, c, (log.get(c) or {}).get("key")), inputs)
        print(f"{label}: executing (reason: {reason}) ...", flush=True)

        def store(info: _Executed, c=c, key=key, inputs=inputs, nb=nb) -> None:
            try:
                execution_cache.store_entry(
                    out_dir, c, key, inputs=inputs, notebook=info.path, prose=execution_cache.prose_digest(nb),
                    results=results, published=info.published, removed=info.removed, executed=info.record)
            except OSError as exc:  # the chapter is published all the same; it is executed again next time
                print(f"note: chapter {c} could not be stored in the execution cache ({exc.strerror or exc}); "
                      "the next book executes it again.", file=sys.stderr, flush=True)

        info = _execute(c, profile=profile, parameters=parameters, out_dir=out_dir, results=results,
                        progress=progress, nb=nb, after_publish=store, key=key)
        done.append(BookChapter(c, "executed", reason, info.path, time.perf_counter() - t0))
        print(f"{c}: executed (reason: {reason}) in {info.seconds:.0f} s -> {info.path}", flush=True)
    reused = sum(d.action == "reused" for d in done)
    print(f"execution cache: {reused} chapter(s) reused, {len(done) - reused} executed "
          f"({execution_cache.cache_dir(out_dir)})", flush=True)
    if only:
        for c, reason in stale_chapters(profile, todo, out_dir=out_dir, results=results, parameters=parameters,
                                        environment=environment).items():
            print(f"note: chapter {c} in the book is out of date ({reason}); it was left as it is because "
                  f"--only named other chapters. Bring it up to date with `python -m analysis_lib book --only "
                  f"{c}` or `make book`.", file=sys.stderr, flush=True)
    return done


def stale_chapters(profile: str, updated: list[str], *, out_dir: Path, results: Path,
                   parameters: dict[str, Any] | None = None, environment: dict[str, str] | None = None) -> dict[str, str]:
    """``{chapter: reason}`` for the book's executed chapters outside ``updated`` whose inputs
    (code, parameters of ``profile``, package, data, models, the results of the chapters before
    them) no longer match the key they were executed or reused under; chapters the book has
    not executed are left out."""
    environment = environment if environment is not None else execution_cache.environment_inputs()
    log = read_execution_log(out_dir)
    stale: dict[str, str] = {}
    book = chapters()
    for c in book:
        if c in updated or not (log.get(c) or {}).get("key") or not (out_dir / f"{c}.ipynb").is_file():
            continue
        nb = source_notebook(c)
        _, params = chapter_parameters(c, profile, parameters, nb=nb)
        inputs = execution_cache.chapter_inputs(nb, params, environment,
                                                execution_cache.upstream_files(c, book, log, results))
        if execution_cache.key_of(inputs) != log[c]["key"]:
            stale[c] = execution_cache.change_reason(execution_cache.latest_inputs(out_dir, c, log[c]["key"]), inputs)
    return stale


def run_book(
    profile: str = "quick", *, only: list[str] | None = None, progress: bool = False, root: Path | None = None,
    parameters: dict[str, Any] | None = None, force: bool = False,
) -> Path:
    """Bring every chapter (or ``only`` these) up to date, then build the book.

    A chapter whose inputs are unchanged since it was last executed into this book folder is
    reused from the execution cache (:func:`update_book_chapters`); ``force`` executes every
    chapter.

    Args:
        profile: the parameter profile.
        only: consider only these chapters (the others must already be executed).
        progress: show papermill's progress bar.
        root: build in this directory instead of the checkout (its sources are copied there).
        parameters: overrides given to every executed chapter (e.g. ``{"model": ...}``).
        force: execute every chapter (or every one of ``only``) even when its inputs are unchanged.
    """
    if root is not None:
        prepare_book_root(root)
    out_dir = Path(root) / "book" if root is not None else None
    update_book_chapters(profile, only=only, progress=progress, out_dir=out_dir, parameters=parameters, force=force)
    return build_book(root=root)
