"""Benchmark data loaders: local files first, checksummed, Hugging Face Hub as fallback.

Every loader returns a :class:`datasets.Dataset` with a fixed, documented set of columns.
The data come from the project's shared data folder (see :func:`data_dir`), whose
``SHA256SUMS`` file lists a sha256 for every data file; each file is verified once per
process before it is parsed. When no local data folder exists at all, the loaders try the
public Hugging Face Hub copy of the same benchmark and map it to the same columns.

Where the data are looked for (:func:`data_dir`):

1. the folder named by the environment variable ``GENDER_NEURONS_DATA`` (an error if it is
   set to a folder that does not exist);
2. ``<repo root>/../shared/data``, where the repo root is the folder that holds the
   ``analysis_lib`` package;
3. ``<current directory>/../shared/data``;
4. otherwise nowhere: the loaders use the Hub (nothing is downloaded at import time).

Failures raise a :class:`~analysis_lib.errors.StudyError` subclass with a one-paragraph
message that names the fix: :class:`~analysis_lib.errors.DataDirError` (no local copy and
the Hub unreachable), :class:`~analysis_lib.errors.ChecksumError` (a local file differs from
``SHA256SUMS``) or :class:`~analysis_lib.errors.ParameterError` (an unknown argument value).

Parsed tables are cached in memory per file (keyed on path, modification time and size),
so repeated calls are cheap. Each call returns a fresh :class:`datasets.Dataset` object that
shares the cached, immutable Arrow buffers; changing its format does not affect other
callers.

Examples
--------
>>> from analysis_lib import data
>>> ss = data.load_stereoset("intrasentence", domain="gender")   # doctest: +SKIP
>>> len(ss)                                                       # doctest: +SKIP
255
>>> wg = data.load_winogender()                                    # doctest: +SKIP
>>> wg[0]["prefix"], wg[0]["pronoun"]                              # doctest: +SKIP
('The technician told the customer that', 'he')
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import random
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets import Dataset, Features, Value

from analysis_lib.errors import ChecksumError, DataDirError, ParameterError, StudyError

__all__ = [
    "ENV_VAR",
    "SUMS_FILE",
    "HUB_IDS",
    "WINOGENDER_PRONOUNS",
    "BBQ_CATEGORIES",
    "data_dir",
    "verify_file",
    "verify_all",
    "load_stereoset",
    "load_winogender",
    "load_winogender_templates",
    "load_occupation_stats",
    "load_winobias",
    "winobias_word_lists",
    "load_bbq",
    "load_race",
    "load_piqa",
    "arithmetic_problems",
]

#: Environment variable that points at the data folder (the one holding ``SHA256SUMS``).
ENV_VAR = "GENDER_NEURONS_DATA"

#: Name of the checksum file at the top of the data folder (``sha256sum`` format).
SUMS_FILE = "SHA256SUMS"

#: The folder that holds the ``analysis_lib`` package (the repository root when the
#: package is used from a checkout). Module-level so tests can point it elsewhere.
_REPO_ROOT: Path = Path(__file__).resolve().parent.parent

#: Hugging Face Hub dataset ids used when no local data folder exists.
HUB_IDS: dict[str, str] = {
    "stereoset": "McGill-NLP/stereoset",
    "winogender": "oskarvanderwal/winogender",
    "winobias": "uclanlp/wino_bias",
    "bbq": "heegyu/bbq",
    "race": "ehovy/race",
    "piqa": "ybisk/piqa",
}

#: All BBQ categories upstream; only some are in the local data folder.
BBQ_CATEGORIES: tuple[str, ...] = (
    "Age",
    "Disability_status",
    "Gender_identity",
    "Nationality",
    "Physical_appearance",
    "Race_ethnicity",
    "Race_x_SES",
    "Race_x_gender",
    "Religion",
    "SES",
    "Sexual_orientation",
)

_STEREOSET_KINDS = ("intrasentence", "intersentence")
#: ``datasets.List`` (datasets >= 4) or ``datasets.Sequence`` (older) for list columns.
_ListOf = getattr(datasets, "List", None) or datasets.Sequence
_STEREOSET_DOMAINS = ("gender", "profession", "race", "religion")
_RACE_LEVELS = ("middle", "high", "all")
_TRUTHY = {"1", "true", "yes", "on"}


# --------------------------------------------------------------------------------------
# Data directory resolution
# --------------------------------------------------------------------------------------


def data_dir() -> Path | None:
    """Return the local benchmark data folder, or ``None`` to fall back to the Hub.

    Returns
    -------
    pathlib.Path or None
        The resolved folder: ``$GENDER_NEURONS_DATA`` if set; else
        ``<repo root>/../shared/data`` if it is a folder; else
        ``<cwd>/../shared/data`` if it is a folder; else ``None``.

    Raises
    ------
    DataDirError
        If ``GENDER_NEURONS_DATA`` is set but does not name an existing folder.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataDirError(
                f"The environment variable {ENV_VAR} is set to '{env}', which is not an "
                f"existing folder. Point {ENV_VAR} at a copy of the project's shared data "
                f"folder (the folder that holds {SUMS_FILE} and one sub-folder per "
                f"benchmark), or unset it to use the default <repo>/../shared/data."
            )
        return path.resolve()
    for candidate in (_REPO_ROOT / ".." / "shared" / "data", Path.cwd() / ".." / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def _searched_locations() -> str:
    """Describe, in words, where :func:`data_dir` looked (for error messages)."""
    env = os.environ.get(ENV_VAR)
    env_part = f"{ENV_VAR}='{env}'" if env else f"{ENV_VAR} (not set)"
    repo = (_REPO_ROOT / ".." / "shared" / "data").resolve()
    cwd = (Path.cwd() / ".." / "shared" / "data").resolve()
    return f"{env_part}, {repo} and {cwd}" if repo != cwd else f"{env_part} and {repo}"


# --------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------

_FileKey = tuple[str, int, int]
_VERIFIED: dict[_FileKey, str] = {}


def _file_key(path: Path) -> _FileKey:
    """Return ``(resolved path, mtime_ns, size)``: the memoization key of a file."""
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _parse_sums(key: _FileKey) -> dict[str, str]:
    """Parse a ``sha256sum``-format file into ``{relative posix path: hex digest}``."""
    sums: dict[str, str] = {}
    for line in Path(key[0]).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, name = line.partition(" ")
        name = name.strip().lstrip("*").strip()
        if name.startswith("./"):
            name = name[2:]
        sums[name] = digest.lower()
    return sums


def _sums_for(root: Path) -> dict[str, str]:
    """Return the parsed ``SHA256SUMS`` of a data folder.

    Raises
    ------
    ChecksumError
        If the folder has no ``SHA256SUMS``.
    """
    sums_path = root / SUMS_FILE
    if not sums_path.is_file():
        raise ChecksumError(
            f"The data folder {root} has no {SUMS_FILE} file, so its files cannot be "
            f"verified. Copy {SUMS_FILE} from the project's shared/data folder next to the "
            f"benchmark sub-folders (or point {ENV_VAR} at a complete copy)."
        )
    return _parse_sums(_file_key(sums_path))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> str:
    """Check one data file against the data folder's ``SHA256SUMS``.

    The check runs once per process per file version (memoized on resolved path,
    modification time and size), so calling it before every read costs a ``stat``.

    Parameters
    ----------
    path
        The file to check; it must lie inside ``root``.
    root
        The data folder holding ``SHA256SUMS``; defaults to :func:`data_dir`.

    Returns
    -------
    str
        The file's sha256 hex digest.

    Raises
    ------
    ChecksumError
        If the file is not listed in ``SHA256SUMS`` or its hash differs.
    DataDirError
        If no data folder can be found.
    """
    path = Path(path)
    root_path = Path(root) if root is not None else data_dir()
    if root_path is None:
        raise DataDirError(
            f"No local data folder to verify {path} against; looked at {_searched_locations()}. "
            f"Set {ENV_VAR} to the project's shared data folder."
        )
    root_path = root_path.resolve()
    if not path.is_file():
        raise ChecksumError(
            f"The data file {path} does not exist, so it cannot be verified. Re-copy it from "
            f"the project's shared/data folder (provenance in its folder's SOURCE.md)."
        )
    key = _file_key(path)
    if key in _VERIFIED:
        return _VERIFIED[key]
    try:
        rel = Path(key[0]).relative_to(root_path).as_posix()
    except ValueError:
        raise ChecksumError(
            f"The file {key[0]} lies outside the data folder {root_path}, so it has no entry "
            f"in {SUMS_FILE}. Read data files only from inside the data folder."
        ) from None
    sums = _sums_for(root_path)
    source_md = root_path / rel.split("/")[0] / "SOURCE.md"
    if rel not in sums:
        raise ChecksumError(
            f"The data file {key[0]} is not listed in {root_path / SUMS_FILE}, so it cannot "
            f"be verified. Use only files that ship with the data folder: re-copy the folder "
            f"from the project's shared/data (provenance in {source_md}), or add the file's "
            f"line to {SUMS_FILE} if you added it on purpose."
        )
    actual = _sha256(path)
    expected = sums[rel]
    if actual != expected:
        raise ChecksumError(
            f"Checksum mismatch for the data file {key[0]}: {SUMS_FILE} expects sha256 "
            f"{expected} but the file hashes to {actual}. The file is corrupt or was edited; "
            f"re-copy it from its origin as described in {source_md} (or from the project's "
            f"shared/data folder)."
        )
    _VERIFIED[key] = actual
    return actual


def verify_all(root: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Verify every file listed in the data folder's ``SHA256SUMS``.

    Parameters
    ----------
    root
        The data folder; defaults to :func:`data_dir`.

    Returns
    -------
    dict of str to str
        ``{relative path: sha256}`` for every listed file.

    Raises
    ------
    ChecksumError
        On the first missing or mismatching file.
    DataDirError
        If no data folder can be found.
    """
    root_path = Path(root) if root is not None else data_dir()
    if root_path is None:
        raise DataDirError(
            f"No local data folder found (looked at {_searched_locations()}). Set {ENV_VAR} "
            f"to the project's shared data folder."
        )
    root_path = root_path.resolve()
    out: dict[str, str] = {}
    for rel in _sums_for(root_path):
        file = root_path / rel
        if not file.is_file():
            raise ChecksumError(
                f"{SUMS_FILE} lists {rel} but {file} does not exist. Re-copy it as described "
                f"in {root_path / rel.split('/')[0] / 'SOURCE.md'}."
            )
        out[rel] = verify_file(file, root_path)
    return out


# --------------------------------------------------------------------------------------
# Local-or-hub plumbing
# --------------------------------------------------------------------------------------


def _hub_offline() -> str | None:
    """Return the name of the offline switch that is on, if any (read at call time)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUTHY:
            return var
    return None


def _locate(rel_paths: Sequence[str], what: str, hub_id: str | None) -> tuple[Path | None, str]:
    """Find the data folder holding ``rel_paths``.

    Returns
    -------
    (root, why_not)
        ``root`` is the data folder when all files are present locally, else ``None`` (use
        the Hub); ``why_not`` says in words why the local copy was not used.

    Raises
    ------
    DataDirError
        If ``GENDER_NEURONS_DATA`` names a missing folder, or a file that ``SHA256SUMS``
        lists is missing from the folder (a broken copy, not something the Hub should hide).
    ChecksumError
        If a file is missing and the folder has no ``SHA256SUMS``.
    """
    try:
        root = data_dir()
    except DataDirError as exc:
        hub = (
            f" The Hugging Face Hub copy '{hub_id}' of {what} was not tried because {ENV_VAR} "
            f"is set; unset it to let the loader fall back to the Hub."
            if hub_id
            else f" There is no Hugging Face Hub copy of {what} to fall back to."
        )
        raise DataDirError(str(exc) + hub) from None
    if root is None:
        return None, f"no local data folder was found (looked at {_searched_locations()})"
    missing = [rel for rel in rel_paths if not (root / rel).is_file()]
    if not missing:
        return root, ""
    sums = _sums_for(root)
    listed = [rel for rel in missing if rel in sums]
    if listed:
        first = listed[0]
        raise DataDirError(
            f"The data folder {root} is incomplete: {root / first} is listed in {SUMS_FILE} but "
            f"missing. Re-copy it as described in {root / first.split('/')[0] / 'SOURCE.md'}, "
            f"or point {ENV_VAR} at a complete copy of the project's shared/data folder."
        )
    return None, f"the local data folder {root} has no {missing[0]}"


def _local_file(root: Path, rel: str) -> _FileKey:
    """Verify ``root/rel`` against ``SHA256SUMS`` and return its cache key."""
    path = root / rel
    verify_file(path, root)
    return _file_key(path)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:240]}" if text else type(exc).__name__


def _no_data_error(what: str, rel: str, hub_id: str | None, why_local: str, why_hub: str) -> DataDirError:
    """Build the one-paragraph error for "neither a local file nor the Hub copy"."""
    hub_part = (
        f"the Hugging Face Hub copy '{hub_id}' could not be loaded ({why_hub})"
        if hub_id
        else "there is no Hugging Face Hub copy of this file to fall back to"
    )
    allow_hub = (
        "allow Hub access (unset HF_HUB_OFFLINE and HF_DATASETS_OFFLINE and check the network)"
    )
    try:
        local = data_dir()
    except DataDirError:
        local = None
    if local is not None and hub_id:
        fix = (
            f"{allow_hub}, or add {rel} to the data folder {local} together with its line in "
            f"{SUMS_FILE}"
        )
    else:
        default = (_REPO_ROOT / ".." / "shared" / "data").resolve()
        fix = (
            f"set the environment variable {ENV_VAR} to the project's shared data folder (the "
            f"folder that holds {SUMS_FILE} and {rel}), or place that folder at {default}"
            + (f", or {allow_hub}" if hub_id else "")
        )
    return DataDirError(f"Cannot load {what}: {why_local}, and {hub_part}. Fix: {fix}.")


def _from_hub(
    what: str,
    rel: str,
    why_local: str,
    hub_id: str,
    config: str | None,
    split: str,
    mapper: Callable[[Dataset], list[dict[str, Any]]],
) -> list[dict[str, Any]]:
    """Load ``hub_id`` from the Hub and map it to row dicts; DataDirError on any failure."""
    offline = _hub_offline()
    if offline:
        raise _no_data_error(what, rel, hub_id, why_local, f"{offline} is set, so the Hub is offline")
    try:
        hub_ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as exc:  # network, auth, missing config: all mean "not available"
        raise _no_data_error(what, rel, hub_id, why_local, _short(exc)) from None
    try:
        return mapper(hub_ds)
    except Exception as exc:
        raise _no_data_error(
            what, rel, hub_id, why_local, f"its layout was not as expected: {_short(exc)}"
        ) from None


def _build(rows: Iterable[dict[str, Any]], features: Features) -> Dataset:
    """Build an in-memory Dataset with a fixed schema (Arrow directly: fast, no cache files)."""
    table = pa.Table.from_pylist(list(rows), schema=features.arrow_schema)
    return Dataset(table, info=datasets.DatasetInfo(features=features))


def _fresh(ds: Dataset) -> Dataset:
    """A new Dataset object sharing ``ds``'s Arrow buffers (cheap; format is independent)."""
    return ds.with_format(None)


def _read_text(key: _FileKey) -> str:
    path = Path(key[0])
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise StudyError(
            f"Data file {path} is not UTF-8 text (byte {exc.start}): it is damaged or not the expected file. "
            "Restore it from its source (see the dataset's SOURCE.md) or check it against SHA256SUMS."
        ) from None
    except OSError as exc:
        raise StudyError(
            f"Data file {path} cannot be read ({exc.strerror or exc}); check the file and its permissions."
        ) from None


def _read_jsonl(key: _FileKey) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(_read_text(key).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise StudyError(
                f"Data file {key[0]}, line {n}, is not a complete JSON record ({exc.msg} at column {exc.colno}): the "
                "file is truncated or damaged. Restore it from its source (see the dataset's SOURCE.md) or check it "
                "against SHA256SUMS."
            ) from None
    return rows


def _read_tsv(key: _FileKey) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(_read_text(key)), delimiter="\t"))


def _check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ParameterError(
            f"Unknown {name} {value!r}; choose one of: {', '.join(repr(a) for a in allowed)}."
        )


# --------------------------------------------------------------------------------------
# StereoSet
# --------------------------------------------------------------------------------------

_STEREOSET_FILE = "stereoset/stereoset_dev.jsonl"
_STEREOSET_FEATURES = Features(
    {
        "id": Value("string"),
        "type": Value("string"),
        "bias_type": Value("string"),
        "target": Value("string"),
        "context": Value("string"),
        "stereotype": Value("string"),
        "anti_stereotype": Value("string"),
        "unrelated": Value("string"),
        "stereotype_fill": Value("string"),
        "anti_stereotype_fill": Value("string"),
        "unrelated_fill": Value("string"),
    }
)
_SS_LABELS = ("stereotype", "anti_stereotype", "unrelated")


def _blank_fill(context: str, sentence: str) -> str:
    """Return the part of ``sentence`` that replaces ``BLANK`` in ``context``.

    Case-insensitive (some StereoSet sentences are lower-cased relative to the context).
    With several ``BLANK`` tokens the span from the first to the last filled word is given.
    """
    c_low, s_low = context.lower(), sentence.lower()
    if context.count("BLANK") == 1:
        i = context.index("BLANK")
        pre, post = c_low[:i], c_low[i + 5 :]
        if s_low.startswith(pre) and s_low.endswith(post) and len(s_low) >= len(pre) + len(post):
            return sentence[len(pre) : len(sentence) - len(post)]
    # Fallback: strip the longest common prefix and suffix.
    p = 0
    while p < min(len(c_low), len(s_low)) and c_low[p] == s_low[p]:
        p += 1
    q = 0
    while q < min(len(c_low), len(s_low)) - p and c_low[-1 - q] == s_low[-1 - q]:
        q += 1
    return sentence[p : len(sentence) - q].strip()


def _stereoset_row(
    id_: str, kind: str, bias_type: str, target: str, context: str, cands: dict[str, str]
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": id_,
        "type": kind,
        "bias_type": bias_type,
        "target": target,
        "context": context,
    }
    for label in _SS_LABELS:
        sent = cands[label]
        row[label] = sent
        row[f"{label}_fill"] = _blank_fill(context, sent) if kind == "intrasentence" else sent
    return row


@functools.lru_cache(maxsize=16)
def _stereoset_local(key: _FileKey, kind: str, domain: str | None) -> Dataset:
    rows = []
    for r in _read_jsonl(key):
        if r["type"] != kind or (domain is not None and r["bias_type"] != domain):
            continue
        cands = {
            "stereotype": r["stereotype"],
            "anti_stereotype": r["anti-stereotype"],
            "unrelated": r["unrelated"],
        }
        rows.append(_stereoset_row(r["id"], kind, r["bias_type"], r["target"], r["context"], cands))
    return _build(rows, _STEREOSET_FEATURES)


def _stereoset_hub_mapper(kind: str) -> Callable[[Dataset], list[dict[str, Any]]]:
    def mapper(hub: Dataset) -> list[dict[str, Any]]:
        names = ["anti-stereotype", "stereotype", "unrelated"]  # McGill-NLP/stereoset ClassLabel
        try:
            names = list(hub.features["sentences"]["gold_label"].feature.names)
        except (AttributeError, KeyError, TypeError):
            pass
        rows = []
        for r in hub:
            sents = r["sentences"]
            cands = {}
            for sent, gold in zip(sents["sentence"], sents["gold_label"]):
                label = names[gold] if isinstance(gold, int) else str(gold)
                cands[label.replace("-", "_")] = sent
            rows.append(
                _stereoset_row(r["id"], kind, r["bias_type"], r["target"], r["context"], cands)
            )
        return rows

    return mapper


def load_stereoset(kind: str = "intrasentence", domain: str | None = "gender") -> Dataset:
    """Load the StereoSet dev set (one row per example).

    Local source: ``stereoset/stereoset_dev.jsonl`` (the full dev content with upstream
    example ids; see ``stereoset/SOURCE.md``). Hub fallback: ``McGill-NLP/stereoset``
    (config ``kind``, split ``validation``).

    Parameters
    ----------
    kind
        ``"intrasentence"`` (fill-in-the-blank; 2,106 items, 255 gender) or
        ``"intersentence"`` (context plus a follow-up sentence; 2,123 items, 242 gender).
    domain
        Bias type to keep: ``"gender"`` (default), ``"profession"``, ``"race"``,
        ``"religion"``, or ``None`` for all.

    Returns
    -------
    datasets.Dataset
        Columns (all strings):

        - ``id``: upstream example id (32 hex characters).
        - ``type``: ``kind``.
        - ``bias_type``: ``gender`` | ``profession`` | ``race`` | ``religion``.
        - ``target``: the target term (e.g. ``mother``).
        - ``context``: intrasentence: the sentence with the token ``BLANK``;
          intersentence: the context sentence.
        - ``stereotype``, ``anti_stereotype``, ``unrelated``: the three candidates as
          given by StereoSet. Intrasentence: the full sentence with ``BLANK`` filled in.
          Intersentence: the continuation sentence that follows ``context``.
        - ``stereotype_fill``, ``anti_stereotype_fill``, ``unrelated_fill``: the text in
          which the candidates differ. Intrasentence: the words that replace ``BLANK``
          (some upstream sentences are lower-cased, so compare case-insensitively);
          intersentence: the continuation sentence again.

    Raises
    ------
    ParameterError
        Unknown ``kind`` or ``domain``.
    DataDirError
        No local copy and the Hub is unreachable.
    ChecksumError
        The local file does not match ``SHA256SUMS``.
    """
    _check_choice("StereoSet kind", kind, _STEREOSET_KINDS)
    if domain is not None:
        _check_choice("StereoSet domain", domain, _STEREOSET_DOMAINS)
    what = f"StereoSet ({kind})"
    root, why = _locate([_STEREOSET_FILE], what, HUB_IDS["stereoset"])
    if root is not None:
        return _fresh(_stereoset_local(_local_file(root, _STEREOSET_FILE), kind, domain))
    ds = _hub_cached(
        ("stereoset", kind, domain),
        lambda: _build(
            [
                row
                for row in _from_hub(
                    what, _STEREOSET_FILE, why, HUB_IDS["stereoset"], kind, "validation",
                    _stereoset_hub_mapper(kind),
                )
                if domain is None or row["bias_type"] == domain
            ],
            _STEREOSET_FEATURES,
        ),
    )
    return _fresh(ds)


_HUB_CACHE: dict[tuple[Any, ...], Dataset] = {}


def _hub_cached(key: tuple[Any, ...], make: Callable[[], Dataset]) -> Dataset:
    if key not in _HUB_CACHE:
        _HUB_CACHE[key] = make()
    return _HUB_CACHE[key]


# --------------------------------------------------------------------------------------
# WinoGender
# --------------------------------------------------------------------------------------

_WG_SENTENCES = "winogender/all_sentences.tsv"
_WG_TEMPLATES = "winogender/templates.tsv"
_WG_STATS = "winogender/occupations-stats.tsv"

#: Pronoun forms by grammatical slot and gender, as WinoGender instantiates them.
WINOGENDER_PRONOUNS: dict[str, dict[str, str]] = {
    "nom": {"male": "he", "female": "she", "neutral": "they"},
    "poss": {"male": "his", "female": "her", "neutral": "their"},
    "acc": {"male": "him", "female": "her", "neutral": "them"},
}
_WG_SLOT = {"$NOM_PRONOUN": "nom", "$POSS_PRONOUN": "poss", "$ACC_PRONOUN": "acc"}

_WG_FEATURES = Features(
    {
        "sentid": Value("string"),
        "sentence": Value("string"),
        "occupation": Value("string"),
        "participant": Value("string"),
        "someone": Value("bool"),
        "answer": Value("int64"),
        "gender": Value("string"),
        "pronoun": Value("string"),
        "pronoun_form": Value("string"),
        "pronoun_start": Value("int64"),
        "prefix": Value("string"),
        "male_pronoun": Value("string"),
        "female_pronoun": Value("string"),
        "neutral_pronoun": Value("string"),
        "template": Value("string"),
    }
)
_WG_TEMPLATE_FEATURES = Features(
    {
        "occupation": Value("string"),
        "participant": Value("string"),
        "answer": Value("int64"),
        "template": Value("string"),
        "pronoun_form": Value("string"),
    }
)


def _wg_templates_rows(key: _FileKey) -> list[dict[str, Any]]:
    rows = []
    for r in _read_tsv(key):
        template = r["sentence"]
        slots = [s for s in _WG_SLOT if s in template]
        if len(slots) != 1:
            raise ValueError(f"template without exactly one pronoun slot: {template!r}")
        rows.append(
            {
                "occupation": r["occupation(0)"],
                "participant": r["other-participant(1)"],
                "answer": int(r["answer"]),
                "template": template,
                "pronoun_form": _WG_SLOT[slots[0]],
            }
        )
    return rows


def _wg_rows(
    pairs: Iterable[tuple[str, str]], templates: dict[tuple[str, int], dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """Turn ``(sentid, sentence)`` pairs into WinoGender rows."""
    rows = []
    for sentid, sentence in pairs:
        occupation, participant, answer, gender, _ = sentid.split(".")
        tmpl = templates.get((occupation, int(answer))) if templates else None
        forms = [tmpl["pronoun_form"]] if tmpl else list(WINOGENDER_PRONOUNS)
        words = {WINOGENDER_PRONOUNS[f][gender]: f for f in forms}
        match = None
        for m in re.finditer(r"[A-Za-z]+", sentence):
            if m.group(0).lower() in words:
                match = m
                break
        if match is None:
            raise ValueError(f"no {gender} pronoun found in WinoGender sentence {sentid!r}")
        form = words[match.group(0).lower()]
        if tmpl is None and gender == "female" and match.group(0).lower() == "her":
            form = "poss"  # ambiguous without the template; poss is the more common slot
        rows.append(
            {
                "sentid": sentid,
                "sentence": sentence,
                "occupation": occupation,
                "participant": participant,
                "someone": participant == "someone",
                "answer": int(answer),
                "gender": gender,
                "pronoun": match.group(0),
                "pronoun_form": form,
                "pronoun_start": match.start(),
                "prefix": sentence[: match.start()].rstrip(),
                "male_pronoun": WINOGENDER_PRONOUNS[form]["male"],
                "female_pronoun": WINOGENDER_PRONOUNS[form]["female"],
                "neutral_pronoun": WINOGENDER_PRONOUNS[form]["neutral"],
                "template": tmpl["template"] if tmpl else "",
            }
        )
    return rows


@functools.lru_cache(maxsize=4)
def _winogender_local(key: _FileKey, tkey: _FileKey) -> Dataset:
    templates = {(t["occupation"], t["answer"]): t for t in _wg_templates_rows(tkey)}
    pairs = [(r["sentid"], r["sentence"]) for r in _read_tsv(key)]
    return _build(_wg_rows(pairs, templates), _WG_FEATURES)


def load_winogender() -> Dataset:
    """Load the 720 WinoGender sentences with the pronoun located in each.

    Local source: ``winogender/all_sentences.tsv`` plus ``templates.tsv`` (for the pronoun
    slot). Hub fallback: ``oskarvanderwal/winogender`` (config ``all``, split ``test``;
    ``template`` is then empty and the slot of a female ``her`` is guessed as ``poss``).

    Returns
    -------
    datasets.Dataset
        720 rows (60 occupations x 2 templates x {specific participant, ``someone``} x
        {male, female, neutral}) with columns:

        - ``sentid`` (str): ``<occupation>.<participant>.<answer>.<gender>.txt``.
        - ``sentence`` (str): the full sentence.
        - ``occupation``, ``participant`` (str): ``participant`` is ``someone`` for the
          bleached variant; ``someone`` (bool) flags it.
        - ``answer`` (int): 0 if the pronoun refers to the occupation, 1 if to the
          participant.
        - ``gender`` (str): ``male`` | ``female`` | ``neutral`` (the pronoun's gender).
        - ``pronoun`` (str): the pronoun as written (``he``, ``she``, ``they``, ``his``,
          ``her``, ``their``, ``him``, ``them``).
        - ``pronoun_form`` (str): ``nom`` | ``poss`` | ``acc``.
        - ``pronoun_start`` (int): character offset of the pronoun in ``sentence``.
        - ``prefix`` (str): the sentence up to the pronoun, trailing space removed, so that
          ``prefix + " " + pronoun`` starts the sentence. Score ``p(" he" | prefix)`` against
          ``p(" she" | prefix)``.
        - ``male_pronoun``, ``female_pronoun``, ``neutral_pronoun`` (str): the three
          pronouns for this slot (e.g. ``his``/``her``/``their``).
        - ``template`` (str): the upstream template the sentence was made from.
    """
    what = "WinoGender"
    root, why = _locate([_WG_SENTENCES, _WG_TEMPLATES], what, HUB_IDS["winogender"])
    if root is not None:
        ds = _winogender_local(_local_file(root, _WG_SENTENCES), _local_file(root, _WG_TEMPLATES))
    else:
        ds = _hub_cached(
            ("winogender",),
            lambda: _build(
                _from_hub(
                    what, _WG_SENTENCES, why, HUB_IDS["winogender"], "all", "test",
                    lambda hub: _wg_rows(zip(hub["sentid"], hub["sentence"]), None),
                ),
                _WG_FEATURES,
            ),
        )
    return _fresh(ds)


@functools.lru_cache(maxsize=4)
def _wg_templates_local(tkey: _FileKey) -> Dataset:
    return _build(_wg_templates_rows(tkey), _WG_TEMPLATE_FEATURES)


def load_winogender_templates() -> Dataset:
    """Load the 120 WinoGender templates (local only).

    Returns
    -------
    datasets.Dataset
        Columns ``occupation`` (str), ``participant`` (str), ``answer`` (int; 0 = pronoun
        refers to the occupation), ``template`` (str with ``$OCCUPATION``,
        ``$PARTICIPANT`` and one of ``$NOM_PRONOUN``/``$POSS_PRONOUN``/``$ACC_PRONOUN``) and
        ``pronoun_form`` (``nom`` | ``poss`` | ``acc``).
    """
    root, why = _locate([_WG_TEMPLATES], "the WinoGender templates", None)
    if root is None:
        raise _no_data_error("the WinoGender templates", _WG_TEMPLATES, None, why, "")
    return _fresh(_wg_templates_local(_local_file(root, _WG_TEMPLATES)))


# --------------------------------------------------------------------------------------
# Occupation statistics
# --------------------------------------------------------------------------------------

_OCC_WINOBIAS = "occupation_stats/winobias_bls_occupations.tsv"
_OCC_538 = "occupation_stats/fivethirtyeight_male-flight-attendants.tsv"
_OCC_FEATURES = Features(
    {
        "occupation": Value("string"),
        "share_women": Value("float64"),
        "source": Value("string"),
        "year": Value("int64"),
        "raw_name": Value("string"),
    }
)


@functools.lru_cache(maxsize=4)
def _occupation_local(wg: _FileKey, wb: _FileKey, f538: _FileKey, text_stats: bool) -> Dataset:
    rows: list[dict[str, Any]] = []
    wg_rows = _read_tsv(wg)
    for r in wg_rows:
        rows.append(
            {
                "occupation": r["occupation"],
                "share_women": float(r["bls_pct_female"]) / 100.0,
                "source": "winogender_bls",
                "year": int(r["bls_year"]),
                "raw_name": r["occupation"],
            }
        )
    for r in _read_tsv(wb):
        rows.append(
            {
                "occupation": r["occupation_in_winobias"],
                "share_women": float(r["pct_female"]) / 100.0,
                "source": "winobias_bls",
                "year": None,
                "raw_name": r["occupation_in_table"],
            }
        )
    for r in _read_tsv(f538):
        rows.append(
            {
                "occupation": r["Job Category"],
                "share_women": round(1.0 - float(r["Percentage Male"]) / 100.0, 6),
                "source": "fivethirtyeight_ipums",
                "year": 2012,
                "raw_name": r["Job Category"],
            }
        )
    if text_stats:
        for r in wg_rows:
            rows.append(
                {
                    "occupation": r["occupation"],
                    "share_women": float(r["bergsma_pct_female"]) / 100.0,
                    "source": "winogender_bergsma_text",
                    "year": None,
                    "raw_name": r["occupation"],
                }
            )
    return _build(rows, _OCC_FEATURES)


def load_occupation_stats(include_text_stats: bool = False) -> Dataset:
    """Real-world share of women per occupation, from three tables, in one tidy table.

    Local only (``winogender/occupations-stats.tsv``,
    ``occupation_stats/winobias_bls_occupations.tsv`` and
    ``occupation_stats/fivethirtyeight_male-flight-attendants.tsv``).

    Parameters
    ----------
    include_text_stats
        Also add WinoGender's Bergsma & Lin (2006) text-derived percentages (source
        ``winogender_bergsma_text``). These measure pronoun usage in text, not the
        workforce, so they are off by default.

    Returns
    -------
    datasets.Dataset
        One row per (occupation, source); columns:

        - ``occupation`` (str): the occupation word as used by the benchmark
          (WinoGender/WinoBias nouns; FiveThirtyEight census category names such as
          ``Registered nurses``).
        - ``share_women`` (float, 0-1).
        - ``source`` (str): ``winogender_bls`` (60 rows, BLS 2015), ``winobias_bls`` (40,
          BLS as quoted by Zhao et al. 2018), ``fivethirtyeight_ipums`` (320, IPUMS 2012,
          computed as 1 - share male), and optionally ``winogender_bergsma_text`` (60).
        - ``year`` (int or None): year of the statistics when known.
        - ``raw_name`` (str): the name in the source table (WinoBias: before its renaming,
          e.g. ``constructor``).
    """
    rels = [_WG_STATS, _OCC_WINOBIAS, _OCC_538]
    root, why = _locate(rels, "the occupation statistics", None)
    if root is None:
        raise _no_data_error("the occupation statistics", _OCC_WINOBIAS, None, why, "")
    keys = [_local_file(root, rel) for rel in rels]
    return _fresh(_occupation_local(*keys, bool(include_text_stats)))


# --------------------------------------------------------------------------------------
# WinoBias
# --------------------------------------------------------------------------------------

_WB_DIR = "winobias"
_WB_MALE_OCC = f"{_WB_DIR}/male_occupations.txt"
_WB_FEMALE_OCC = f"{_WB_DIR}/female_occupations.txt"
_WB_EXTRA = f"{_WB_DIR}/extra_gendered_words.txt"
_WB_SWAPS = f"{_WB_DIR}/generalized_swaps.txt"
_WB_PRONOUN_GENDER = {
    "he": "male",
    "him": "male",
    "his": "male",
    "himself": "male",
    "she": "female",
    "her": "female",
    "hers": "female",
    "herself": "female",
}
_WB_FEATURES = Features(
    {
        "id": Value("string"),
        "pair_id": Value("string"),
        "split": Value("string"),
        "type": Value("int64"),
        "stereotype": Value("string"),
        "line": Value("int64"),
        "sentence": Value("string"),
        "bracketed": Value("string"),
        "entity": Value("string"),
        "entity_start": Value("int64"),
        "entity_end": Value("int64"),
        "pronoun": Value("string"),
        "pronoun_start": Value("int64"),
        "pronoun_end": Value("int64"),
        "pronouns": _ListOf(Value("string")),
        "pronoun_gender": Value("string"),
        "occupation": Value("string"),
        "occupation_gender": Value("string"),
        "other_occupation": Value("string"),
        "prefix": Value("string"),
    }
)


def _wb_file(split: str, type_: int, stereotype: str) -> str:
    return f"{_WB_DIR}/{stereotype}_stereotyped_type{type_}.txt.{split}"


def _lines(key: _FileKey) -> list[str]:
    return [line.strip() for line in _read_text(key).splitlines() if line.strip()]


@functools.lru_cache(maxsize=8)
def _occupation_regex(occupations: tuple[str, ...]) -> tuple[re.Pattern[str], dict[str, str]]:
    """One case-insensitive whole-word regex for all occupations (longest first)."""
    ordered = sorted(occupations, key=len, reverse=True)
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(o) for o in ordered) + r")\b", re.IGNORECASE)
    return pattern, {o.lower(): o for o in occupations}


def _wb_parse(
    bracketed: str,
    occupations: dict[str, str],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Parse one WinoBias sentence with ``[...]`` spans into a row."""
    sentence_parts: list[str] = []
    spans: list[tuple[str, int, int]] = []
    pos = 0
    for m in re.finditer(r"\[([^\]]*)\]", bracketed):
        sentence_parts.append(bracketed[pos : m.start()])
        offset = sum(len(p) for p in sentence_parts)
        inner = m.group(1)
        lead = len(inner) - len(inner.lstrip())
        text = inner.strip()
        spans.append((text, offset + lead, offset + lead + len(text)))
        sentence_parts.append(inner)
        pos = m.end()
    sentence_parts.append(bracketed[pos:])
    sentence = "".join(sentence_parts)
    if len(spans) < 2:
        raise ValueError(f"WinoBias sentence without entity and pronoun spans: {bracketed!r}")
    entity, pronoun = spans[0], spans[1]
    pattern, canonical = _occupation_regex(tuple(occupations))
    found = [canonical[m.group(0).lower()] for m in pattern.finditer(sentence)]
    in_entity = [canonical[m.group(0).lower()] for m in pattern.finditer(entity[0])]
    referent = in_entity[0] if in_entity else ""
    other = next((occ for occ in found if occ != referent), "")
    return {
        **meta,
        "sentence": sentence,
        "bracketed": bracketed,
        "entity": entity[0],
        "entity_start": entity[1],
        "entity_end": entity[2],
        "pronoun": pronoun[0],
        "pronoun_start": pronoun[1],
        "pronoun_end": pronoun[2],
        "pronouns": [s[0] for s in spans[1:]],
        "pronoun_gender": _WB_PRONOUN_GENDER.get(pronoun[0].lower(), ""),
        "occupation": referent,
        "occupation_gender": occupations.get(referent, ""),
        "other_occupation": other,
        "prefix": sentence[: pronoun[1]].rstrip(),
    }


def _wb_meta(split: str, type_: int, stereotype: str, line: int) -> dict[str, Any]:
    return {
        "id": f"{split}-type{type_}-{stereotype}-{line}",
        "pair_id": f"{split}-type{type_}-{line}",
        "split": split,
        "type": type_,
        "stereotype": stereotype,
        "line": line,
    }


@functools.lru_cache(maxsize=16)
def _wb_occupations(male: _FileKey, female: _FileKey) -> dict[str, str]:
    occ = {o: "male" for o in _lines(male)}
    occ.update({o: "female" for o in _lines(female)})
    return occ


@functools.lru_cache(maxsize=32)
def _winobias_local(
    key: _FileKey, split: str, type_: int, stereotype: str, male: _FileKey, female: _FileKey
) -> Dataset:
    occupations = _wb_occupations(male, female)
    rows = []
    for raw in _lines(key):
        num, _, text = raw.partition(" ")
        rows.append(_wb_parse(text.strip(), occupations, _wb_meta(split, type_, stereotype, int(num))))
    return _build(rows, _WB_FEATURES)


def _wb_hub_mapper(
    split: str, type_: int, stereotype: str, occupations: dict[str, str]
) -> Callable[[Dataset], list[dict[str, Any]]]:
    def mapper(hub: Dataset) -> list[dict[str, Any]]:
        rows = []
        for i, r in enumerate(hub, start=1):
            toks = list(r["tokens"])
            idx = [int(x) for x in r["coreference_clusters"]]
            for start, end in zip(idx[0::2], idx[1::2]):
                toks[start] = "[" + toks[start]
                toks[end] = toks[end] + "]"
            rows.append(_wb_parse(" ".join(toks), occupations, _wb_meta(split, type_, stereotype, i)))
        return rows

    return mapper


def load_winobias(
    split: str = "dev", type: int | None = 1, stereotype: str | None = None  # noqa: A002
) -> Dataset:
    """Load WinoBias sentences (pro- and anti-stereotypical) with their marked spans.

    Local source: ``winobias/{pro,anti}_stereotyped_type{1,2}.txt.{dev,test}`` (396 lines
    each). Hub fallback: ``uclanlp/wino_bias`` (configs ``type{1,2}_{pro,anti}``; its text
    is tokenized, so punctuation is space-separated).

    Parameters
    ----------
    split
        ``"dev"`` or ``"test"``.
    type
        1 (pronoun resolvable only by semantics/world knowledge), 2 (resolvable by syntax),
        or ``None`` for both.
    stereotype
        ``"pro"``, ``"anti"`` or ``None`` (both; default).

    Returns
    -------
    datasets.Dataset
        792 rows per (split, type) when ``stereotype`` is ``None``: all ``pro`` lines, then
        all ``anti`` lines (type 1 before type 2). Columns:

        - ``id`` (str): ``<split>-type<t>-<pro|anti>-<line>``; ``pair_id`` (str):
          ``<split>-type<t>-<line>``, shared by the pro and anti versions of a sentence.
        - ``split`` (str), ``type`` (int), ``stereotype`` (``pro`` | ``anti``), ``line``
          (int, 1-based line number in the upstream file).
        - ``sentence`` (str): the sentence with the brackets removed.
        - ``bracketed`` (str): the upstream sentence with its ``[...]`` marks.
        - ``entity`` (str, e.g. ``The developer``), ``entity_start``, ``entity_end`` (int,
          character offsets in ``sentence``): the occupation mention the pronoun refers to.
        - ``pronoun`` (str), ``pronoun_start``, ``pronoun_end`` (int): the first bracketed
          pronoun; ``pronouns`` (list of str): all bracketed pronouns (87 of the 3,168
          sentences mark two).
        - ``pronoun_gender`` (``male`` | ``female``).
        - ``occupation`` (str): the referent occupation, as in the WinoBias occupation lists
          (e.g. ``construction worker``); ``occupation_gender`` (``male`` | ``female``): the
          list it is on (BLS majority gender); ``other_occupation`` (str): the other
          occupation mentioned in the sentence.
        - ``prefix`` (str): ``sentence`` up to the first bracketed pronoun, trailing space
          removed (to score ``p(" he")`` against ``p(" she")``).
    """
    _check_choice("WinoBias split", split, ("dev", "test"))
    if type is not None:
        _check_choice("WinoBias type", type, (1, 2))
    if stereotype is not None:
        _check_choice("WinoBias stereotype", stereotype, ("pro", "anti"))
    types = (1, 2) if type is None else (type,)
    stereos = ("pro", "anti") if stereotype is None else (stereotype,)
    parts = [_winobias_one(split, t, s) for t in types for s in stereos]
    if len(parts) == 1:
        return _fresh(parts[0])
    return datasets.concatenate_datasets(parts)


def _winobias_one(split: str, type_: int, stereotype: str) -> Dataset:
    rel = _wb_file(split, type_, stereotype)
    what = f"WinoBias ({stereotype}-stereotyped type {type_}, {split})"
    root, why = _locate([rel, _WB_MALE_OCC, _WB_FEMALE_OCC], what, HUB_IDS["winobias"])
    if root is not None:
        male, female = _local_file(root, _WB_MALE_OCC), _local_file(root, _WB_FEMALE_OCC)
        return _winobias_local(_local_file(root, rel), split, type_, stereotype, male, female)
    hub_split = "validation" if split == "dev" else "test"
    return _hub_cached(
        ("winobias", split, type_, stereotype),
        lambda: _build(
            _from_hub(
                what, rel, why, HUB_IDS["winobias"], f"type{type_}_{stereotype}", hub_split,
                _wb_hub_mapper(split, type_, stereotype, dict(_WB_BUILTIN_OCCUPATIONS)),
            ),
            _WB_FEATURES,
        ),
    )


# The 40 WinoBias occupations (upstream male_/female_occupations.txt), used only to map
# the Hub copy when no local folder exists.
_WB_BUILTIN_OCCUPATIONS: dict[str, str] = {
    **{o: "male" for o in (
        "driver", "supervisor", "janitor", "cook", "mover", "laborer", "construction worker",
        "chief", "developer", "carpenter", "manager", "lawyer", "farmer", "salesperson",
        "physician", "guard", "analyst", "mechanic", "sheriff", "CEO")},
    **{o: "female" for o in (
        "attendant", "cashier", "teacher", "nurse", "assistant", "secretary", "auditor",
        "cleaner", "receptionist", "clerk", "counselor", "designer", "hairdresser", "writer",
        "housekeeper", "baker", "accountant", "editor", "librarian", "tailor")},
}

_FEMALE_WORDS = frozenset(
    """she her hers herself girl girls gal gals chick chicks mom moms mommy mommies
    daughter daughters wife wives queen queens lady ladies bride brides aunt aunts
    mother mothers sister sisters niece nieces nun nuns widow widows witch witches
    spinster spinsters belle belles female females lass lasses fiancee fiancees ma'am
    miss mrs. ms. heroine heroines masseuse masseuses maidservant maidservants""".split()
)
_FEMALE_SUFFIXES = (
    "woman", "women", "girl", "girls", "ess", "esses", "ess'", "mother", "mothers",
    "daughter", "daughters", "lady", "ladies",
)


def _is_female_word(word: str) -> bool:
    w = word.lower()
    return w in _FEMALE_WORDS or w.endswith(_FEMALE_SUFFIXES)


@functools.lru_cache(maxsize=4)
def _word_lists(male: _FileKey, female: _FileKey, extra: _FileKey, swaps: _FileKey) -> dict[str, Any]:
    pairs: list[tuple[str, str]] = []
    seen: set[frozenset[str]] = set()
    for key in (extra, swaps):
        for line in _lines(key):
            cols = [c.strip() for c in line.split("\t") if c.strip()]
            if len(cols) != 2:
                continue
            x, y = cols
            fx, fy = _is_female_word(x), _is_female_word(y)
            if fx == fy:
                raise ValueError(f"cannot tell which of {x!r}/{y!r} is the female word")
            pair = (y, x) if fx else (x, y)
            if frozenset(pair) in seen:
                continue
            seen.add(frozenset(pair))
            pairs.append(pair)
    return {
        "male_occupations": tuple(_lines(male)),
        "female_occupations": tuple(_lines(female)),
        "gendered_pairs": tuple(pairs),
        "male_words": tuple(sorted({m for m, _ in pairs})),
        "female_words": tuple(sorted({f for _, f in pairs})),
    }


def winobias_word_lists() -> dict[str, list[Any]]:
    """Return the WinoBias occupation lists and gendered word pairs (local only).

    Returns
    -------
    dict
        - ``male_occupations``, ``female_occupations`` (list of str, 20 each): the
          occupations with a male / female majority (BLS), from
          ``winobias/{male,female}_occupations.txt``.
        - ``gendered_pairs`` (list of ``(male, female)`` tuples): the union of
          ``extra_gendered_words.txt`` and ``generalized_swaps.txt`` (stripped, each
          unordered pair once, in file order). The files list pairs in both directions;
          each pair is oriented male-first by a small rule (a known female word such as
          ``she``/``mother``/``nun``, or a female ending such as ``-woman``, ``-ess``,
          ``-girl``). Upstream spellings (``godess``, ``mentleman``) are kept.
        - ``male_words``, ``female_words`` (sorted lists of str): the two sides of the pairs.
    """
    rels = [_WB_MALE_OCC, _WB_FEMALE_OCC, _WB_EXTRA, _WB_SWAPS]
    root, why = _locate(rels, "the WinoBias word lists", None)
    if root is None:
        raise _no_data_error("the WinoBias word lists", _WB_EXTRA, None, why, "")
    lists = _word_lists(*(_local_file(root, rel) for rel in rels))
    return {k: list(v) for k, v in lists.items()}


# --------------------------------------------------------------------------------------
# BBQ
# --------------------------------------------------------------------------------------

_BBQ_FEATURES = Features(
    {
        "example_id": Value("int64"),
        "question_index": Value("string"),
        "question_polarity": Value("string"),
        "context_condition": Value("string"),
        "category": Value("string"),
        "context": Value("string"),
        "question": Value("string"),
        "ans0": Value("string"),
        "ans1": Value("string"),
        "ans2": Value("string"),
        "label": Value("int64"),
        "choices": _ListOf(Value("string")),
        "ans0_term": Value("string"),
        "ans0_group": Value("string"),
        "ans1_term": Value("string"),
        "ans1_group": Value("string"),
        "ans2_term": Value("string"),
        "ans2_group": Value("string"),
        "subcategory": Value("string"),
        "stereotyped_groups": _ListOf(Value("string")),
        "version": Value("string"),
        "source": Value("string"),
        "unknown_label": Value("int64"),
        "target_label": Value("int64"),
    }
)


def _bbq_norm(group: str) -> str:
    """Map BBQ answer/stereotype group labels onto one vocabulary."""
    g = group.strip().lower()
    if g in {"m", "man", "boy", "men", "male"}:
        return "M"
    if g in {"f", "woman", "girl", "women", "female"}:
        return "F"
    if g.startswith("nontrans"):
        return "nonTrans"
    if g.startswith("trans"):
        return "trans"
    if g.startswith("nondisabled"):
        return "nonDisabled"
    return group.strip()


def _bbq_stereo_norm(group: str, category: str) -> str:
    g = _bbq_norm(group)
    if category == "Disability_status" and g not in {"nonDisabled"}:
        return "disabled"
    return g


def _bbq_row(r: dict[str, Any]) -> dict[str, Any]:
    info = r["answer_info"]
    meta = r.get("additional_metadata") or {}
    stereo = list(meta.get("stereotyped_groups") or [])
    row: dict[str, Any] = {
        k: r[k]
        for k in (
            "example_id", "question_index", "question_polarity", "context_condition",
            "category", "context", "question", "ans0", "ans1", "ans2", "label",
        )
    }
    row["example_id"] = int(row["example_id"])
    row["question_index"] = str(row["question_index"])
    row["label"] = int(row["label"])
    row["choices"] = [r["ans0"], r["ans1"], r["ans2"]]
    groups = []
    for i in range(3):
        term, group = list(info[f"ans{i}"])[:2]
        row[f"ans{i}_term"], row[f"ans{i}_group"] = term, group
        groups.append(group)
    row["subcategory"] = str(meta.get("subcategory", ""))
    row["stereotyped_groups"] = stereo
    row["version"] = str(meta.get("version", ""))
    row["source"] = str(meta.get("source", ""))
    unknown = [i for i, g in enumerate(groups) if g == "unknown"]
    row["unknown_label"] = unknown[0] if len(unknown) == 1 else -1
    targets_norm = {_bbq_stereo_norm(s, r["category"]) for s in stereo}
    hits = [
        i for i, g in enumerate(groups) if g != "unknown" and _bbq_norm(g) in targets_norm
    ]
    row["target_label"] = hits[0] if len(hits) == 1 else -1
    return row


@functools.lru_cache(maxsize=16)
def _bbq_local(key: _FileKey) -> Dataset:
    return _build((_bbq_row(r) for r in _read_jsonl(key)), _BBQ_FEATURES)


def load_bbq(category: str = "Gender_identity") -> Dataset:
    """Load one BBQ category (one row per question).

    Local source: ``bbq/<category>.jsonl`` (``Gender_identity`` 5,672 rows, ``Age`` 3,680,
    ``Disability_status`` 1,556). Other categories: Hub fallback ``heegyu/bbq`` (config
    ``category``, split ``test``).

    Parameters
    ----------
    category
        A BBQ category name, e.g. ``"Gender_identity"``, ``"Age"``, ``"Disability_status"``.

    Returns
    -------
    datasets.Dataset
        Columns:

        - Raw fields: ``example_id`` (int), ``question_index`` (str),
          ``question_polarity`` (``neg`` | ``nonneg``), ``context_condition``
          (``ambig`` | ``disambig``), ``category``, ``context``, ``question``, ``ans0``,
          ``ans1``, ``ans2`` (str) and ``label`` (int, index of the correct answer).
        - ``choices`` (list of 3 str): ``[ans0, ans1, ans2]``.
        - ``ans{i}_term``, ``ans{i}_group`` (str): the flattened ``answer_info`` (e.g.
          ``("man", "M")``, ``("Not enough information", "unknown")``).
        - ``subcategory``, ``stereotyped_groups`` (list of str), ``version``, ``source``:
          the flattened ``additional_metadata``.
        - ``unknown_label`` (int): index of the "unknown" answer.
        - ``target_label`` (int): index of the answer that names a stereotyped group (the
          bias target), derived by matching ``ans{i}_group`` against
          ``stereotyped_groups`` after normalising labels (``M``/``man``/``boy`` ->
          ``M``, ``trans_F``/``transgender women`` -> ``trans``, any disability ->
          ``disabled``); -1 where no unique match exists. This stands in for the upstream
          ``target_loc`` column of ``additional_metadata.csv``, which is not shipped.

    Raises
    ------
    ParameterError
        ``category`` is not a BBQ category (the message lists them).
    """
    if category not in BBQ_CATEGORIES:
        raise ParameterError(
            f"Unknown BBQ category {category!r}. BBQ categories: {', '.join(BBQ_CATEGORIES)}; "
            f"the local data folder holds Age, Disability_status and Gender_identity, the others "
            f"come from the Hub ({HUB_IDS['bbq']})."
        )
    rel = f"bbq/{category}.jsonl"
    what = f"BBQ ({category})"
    root, why = _locate([rel], what, HUB_IDS["bbq"])
    if root is not None:
        return _fresh(_bbq_local(_local_file(root, rel)))
    ds = _hub_cached(
        ("bbq", category),
        lambda: _build(
            _from_hub(
                what, rel, why, HUB_IDS["bbq"], category, "test",
                lambda hub: [_bbq_row(r) for r in hub],
            ),
            _BBQ_FEATURES,
        ),
    )
    return _fresh(ds)


# --------------------------------------------------------------------------------------
# RACE and PIQA (capability checks)
# --------------------------------------------------------------------------------------

_MC_FEATURES = Features(
    {
        "id": Value("string"),
        "context": Value("string"),
        "question": Value("string"),
        "choices": _ListOf(Value("string")),
        "label": Value("int64"),
    }
)
_RACE_FEATURES = Features({**_MC_FEATURES, "example_id": Value("string"), "answer": Value("string")})


def _race_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    counter: dict[str, int] = {}
    for r in records:
        ex = r["example_id"]
        k = counter.get(ex, 0)
        counter[ex] = k + 1
        rows.append(
            {
                "id": f"{ex}-{k}",
                "context": r["article"],
                "question": r["question"],
                "choices": list(r["options"]),
                "label": "ABCD".index(r["answer"].strip()),
                "example_id": ex,
                "answer": r["answer"].strip(),
            }
        )
    return rows


@functools.lru_cache(maxsize=4)
def _race_local(key: _FileKey) -> Dataset:
    return _build(_race_rows(_read_jsonl(key)), _RACE_FEATURES)


def load_race(level: str = "middle") -> Dataset:
    """Load the RACE reading-comprehension test split (one row per question).

    Local source: ``race/test_middle.jsonl`` (RACE-M test: 1,436 questions over 362
    passages). ``high``/``all`` are not in the local folder and come from the Hub
    (``ehovy/race``, config ``level``, split ``test``).

    Parameters
    ----------
    level
        ``"middle"``, ``"high"`` or ``"all"``.

    Returns
    -------
    datasets.Dataset
        Columns ``id`` (str, ``<example_id>-<k>`` for the k-th question on a passage),
        ``context`` (str, the passage), ``question`` (str; blanks written ``_``),
        ``choices`` (list of 4 str), ``label`` (int 0-3), ``example_id`` (str, passage
        file name) and ``answer`` (str, ``A``-``D``).
    """
    _check_choice("RACE level", level, _RACE_LEVELS)
    rel = f"race/test_{level}.jsonl"
    what = f"RACE ({level}, test)"
    root, why = _locate([rel], what, HUB_IDS["race"])
    if root is not None:
        return _fresh(_race_local(_local_file(root, rel)))
    ds = _hub_cached(
        ("race", level),
        lambda: _build(
            _from_hub(what, rel, why, HUB_IDS["race"], level, "test", lambda hub: _race_rows(hub)),
            _RACE_FEATURES,
        ),
    )
    return _fresh(ds)


_PIQA_FILE = "piqa/valid.jsonl"
_PIQA_LABELS = "piqa/valid-labels.lst"


def _piqa_rows(records: Iterable[dict[str, Any]], labels: Iterable[int]) -> list[dict[str, Any]]:
    rows = []
    for i, (r, lab) in enumerate(zip(records, labels, strict=True)):
        rows.append(
            {
                "id": str(i),
                "context": "",
                "question": r["goal"],
                "choices": [r["sol1"], r["sol2"]],
                "label": int(lab),
            }
        )
    return rows


@functools.lru_cache(maxsize=4)
def _piqa_local(key: _FileKey, lkey: _FileKey) -> Dataset:
    labels = [int(x) for x in _lines(lkey)]
    return _build(_piqa_rows(_read_jsonl(key), labels), _MC_FEATURES)


def load_piqa() -> Dataset:
    """Load the PIQA validation split (1,838 two-choice physical-commonsense items).

    Local source: ``piqa/valid.jsonl`` with ``piqa/valid-labels.lst``. Hub fallback:
    ``ybisk/piqa`` (split ``validation``).

    Returns
    -------
    datasets.Dataset
        Columns ``id`` (str, 0-based line number), ``context`` (str, always empty; kept so
        the layout matches :func:`load_race`), ``question`` (str, the PIQA ``goal``),
        ``choices`` (list of 2 str: ``sol1``, ``sol2``) and ``label`` (int 0/1).
    """
    what = "PIQA (validation)"
    root, why = _locate([_PIQA_FILE, _PIQA_LABELS], what, HUB_IDS["piqa"])
    if root is not None:
        return _fresh(_piqa_local(_local_file(root, _PIQA_FILE), _local_file(root, _PIQA_LABELS)))
    ds = _hub_cached(
        ("piqa",),
        lambda: _build(
            _from_hub(
                what, _PIQA_FILE, why, HUB_IDS["piqa"], None, "validation",
                lambda hub: _piqa_rows(hub, hub["label"]),
            ),
            _MC_FEATURES,
        ),
    )
    return _fresh(ds)


# --------------------------------------------------------------------------------------
# Arithmetic
# --------------------------------------------------------------------------------------

_ARITH_FEATURES = Features(
    {
        "prompt": Value("string"),
        "a": Value("int64"),
        "b": Value("int64"),
        "answer": Value("int64"),
        "target": Value("string"),
        "digits": Value("int64"),
        "answer_digits": Value("int64"),
        "carry": Value("bool"),
    }
)


def _digit_ranges(digits: Sequence[int]) -> list[tuple[int, int]]:
    """Inclusive operand ranges for each allowed digit count (1 digit includes 0)."""
    out = []
    for d in sorted(set(digits)):
        if not isinstance(d, int) or isinstance(d, bool) or d < 1:
            raise ParameterError(f"digits must be positive integers, got {digits!r}.")
        out.append((0 if d == 1 else 10 ** (d - 1), 10**d - 1))
    if not out:
        raise ParameterError("digits must name at least one operand length, e.g. (1, 2).")
    return out


def _has_carry(a: int, b: int) -> bool:
    carry = 0
    while a or b:
        s = a % 10 + b % 10 + carry
        if s >= 10:
            return True
        carry = 0
        a //= 10
        b //= 10
    return False


def _arith_row(a: int, b: int, prefix: str) -> dict[str, Any]:
    return {
        "prompt": f"{prefix}{a}+{b}=",
        "a": a,
        "b": b,
        "answer": a + b,
        "target": str(a + b),
        "digits": max(len(str(a)), len(str(b))),
        "answer_digits": len(str(a + b)),
        "carry": _has_carry(a, b),
    }


def arithmetic_problems(
    n: int | None = 500, digits: Sequence[int] = (1, 2), seed: int = 0, shots: int = 0
) -> Dataset:
    """Generate ``a+b=`` prompts deterministically (spec of ``arithmetic/SOURCE.md``).

    Operands are drawn uniformly, ``a`` then ``b`` for each pair, with
    ``random.Random(seed)`` from the integers whose decimal length is in ``digits``
    (length 1 includes 0). With the defaults this is the suggested spec: ``a, b`` uniform
    on ``[0, 99]``, seed 0, N = 500, prompt ``f"{a}+{b}="`` with no spaces.

    Parameters
    ----------
    n
        Number of problems; ``None`` gives the whole (a, b) grid in order (10,000 pairs for
        ``digits=(1, 2)``), for exhaustive checks.
    digits
        Allowed operand lengths, e.g. ``(1, 2)`` (0-99), ``(2,)`` (10-99), ``(3,)``.
    seed
        Seed of the generator; the same arguments always give the same rows.
    shots
        Number of solved examples put before each prompt, each written ``"a+b=c\\n"``.
        They are drawn from a separate generator seeded with ``seed`` (the same for every
        prompt), so the problems themselves do not depend on ``shots``.

    Returns
    -------
    datasets.Dataset
        Columns ``prompt`` (str), ``a``, ``b``, ``answer`` (int, ``a + b``), ``target``
        (str, ``str(answer)``), ``digits`` (int, the longer operand's length),
        ``answer_digits`` (int) and ``carry`` (bool, whether the column addition carries).
    """
    ranges = _digit_ranges(digits)
    if n is not None and (not isinstance(n, int) or n < 0):
        raise ParameterError(f"n must be a non-negative integer or None, got {n!r}.")
    if shots < 0:
        raise ParameterError(f"shots must be >= 0, got {shots!r}.")
    sizes = [hi - lo + 1 for lo, hi in ranges]
    total = sum(sizes)

    def draw(rng: random.Random) -> int:
        k = rng.randrange(total)
        for (lo, _), size in zip(ranges, sizes):
            if k < size:
                return lo + k
            k -= size
        raise AssertionError("unreachable")

    prefix = ""
    if shots:
        shot_rng = random.Random(f"arithmetic-shots-{seed}")
        prefix = "".join(
            f"{x}+{y}={x + y}\n" for x, y in ((draw(shot_rng), draw(shot_rng)) for _ in range(shots))
        )
    if n is None:
        values = [v for lo, hi in ranges for v in range(lo, hi + 1)]
        pairs = [(a, b) for a in values for b in values]
    else:
        rng = random.Random(seed)
        pairs = []
        for _ in range(n):
            a = draw(rng)
            b = draw(rng)
            pairs.append((a, b))
    return _build((_arith_row(a, b, prefix) for a, b in pairs), _ARITH_FEATURES)
