"""Neuron edits: ablating (or scaling) FFN and attention value neurons as reusable edits.

**What an edit does** (method_spec §2.2 P1-D/P1-E and §6 A6):

* FFN neuron ``ffnL{l}N{i}``: column ``i`` of ``down_proj.weight`` of layer ``l`` (the vector
  the neuron writes into the residual stream) is multiplied by ``factor`` (0 = ablation). This
  is exactly ``hook_post[..., i] *= factor`` at every position: the coefficient ``m_i`` is still
  computed, but what it writes is scaled.
* aggregated attention value neuron ``attnL{l}H{h}D{j}``: column ``h*d_head + j`` of
  ``o_proj.weight`` is multiplied by ``factor``, which equals ``hook_z[..., h, j] *= factor``
  at every position. ``v_proj`` is never touched: under grouped-query attention its row
  ``(h // group, j)`` feeds ``group`` query heads, so zeroing it would ablate
  ``attnL{l}H{h'}D{j}`` for every query head ``h'`` of the group (§6 A6).
* positional attention value neuron ``attnL{l}H{h}D{j}P{p}``: only the value read from source
  position ``p`` (0 = the start token) by head ``h`` in dimension ``j``. This is not a weight
  edit. It is done with three bridge hooks on layer ``l``: ``hook_v`` and ``hook_pattern`` are
  read, and ``hook_z[b, q, h, j]`` loses ``(1 - factor) * pattern[b, h, q, p] * v[b, p, h // group, j]``
  for every query position ``q``. Positions are absolute token indices of right-padded batches
  (what :mod:`analysis_lib.scoring` and :mod:`analysis_lib.capability` use). A prompt shorter
  than ``p + 1`` tokens has no position ``p``, so nothing is removed for it. A forward pass
  with a KV cache (incremental decoding) raises :class:`~analysis_lib.errors.EditError`: the
  hook would not see the cached values.

All weight edits save the exact columns they change and put them back bit-exactly. Use

* :func:`mask_neurons` / :func:`scale_neurons`: context managers that edit the model in
  place and restore it on exit, also when the block raises;
* :func:`masked_copy`: a deep copy with the edit applied for good (the original is untouched);
* :class:`EditSpec`, :func:`save_edit`, :func:`load_edit`, :func:`apply_edit`: an edit as a
  JSON file (neuron ids, model, start-token policy, how it was chosen, metadata) that a later
  chapter re-applies; applying it to another model is an :class:`~analysis_lib.errors.EditError`.

Example::

    with mask_neurons(model, ["ffnL2N7003", "ffnL2N4090"]):
        table = capability_suite(model)      # measured on the edited model
    # model is bit-identical to before here
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Iterator, Sequence

import torch

from .errors import EditError, NeuronIdError
from .neurons import NeuronId, arch, clear_model_cache, hf_layer, unwrap

__all__ = [
    "EditSpec",
    "apply_edit",
    "edit_column",
    "edit_module",
    "edited_copy",
    "has_position_hooks",
    "load_edit",
    "mask_neurons",
    "masked_copy",
    "resolve_neurons",
    "save_edit",
    "scale_neurons",
]

EDIT_FORMAT = 1

NeuronLike = "str | NeuronId"


# ----------------------------------------------------------------------------- ids


def _limits(model: Any) -> SimpleNamespace:
    """The ranges neuron ids must fall in, read from the live HF modules."""
    a = arch(model)
    return SimpleNamespace(
        n_layers=a.n_layers,
        d_mlp=a.d_mlp,
        n_heads=a.n_heads,
        d_head=a.d_head,
        model_name=getattr(model, "study_name", None) or "this model",
    )


def resolve_neurons(model: Any, neurons: Any) -> list[NeuronId]:
    """Parse and validate neuron ids against ``model``; duplicates are dropped (order kept).

    Args:
        model: a loaded bridge.
        neurons: one id or an iterable of ids, each a :class:`NeuronId` or a string such as
            ``"ffnL2N7003"``, ``"attnL3H2D17"`` or ``"attnL3H2D17P0"``.

    Raises:
        NeuronIdError: an id cannot be parsed or is out of range (the message names the
            entry and gives the valid range).
    """
    if isinstance(neurons, (str, NeuronId)):
        neurons = [neurons]
    if neurons is None:
        raise NeuronIdError("No neurons given: pass a list of ids such as ['ffnL2N7003'].")
    limits = _limits(model)
    out: list[NeuronId] = []
    seen: set[NeuronId] = set()
    for k, raw in enumerate(neurons):
        try:
            n = NeuronId.parse(raw)
            n.validate(limits)
        except NeuronIdError as exc:
            raise NeuronIdError(f"Neuron list entry {k} ({raw!r}): {exc}") from None
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out


# ----------------------------------------------------------------------------- weight edits


@dataclass
class _ColumnEdit:
    """Columns of one weight matrix, with their saved original values."""

    weight: torch.Tensor
    cols: torch.Tensor
    saved: torch.Tensor | None = None

    def apply(self, factor: float) -> None:
        with torch.no_grad():
            self.saved = self.weight[:, self.cols].clone()
            if factor == 0.0:
                self.weight[:, self.cols] = 0.0
            else:
                self.weight[:, self.cols] = self.saved * factor

    def restore(self) -> None:
        if self.saved is None:
            return
        with torch.no_grad():
            self.weight[:, self.cols] = self.saved
        self.saved = None


def edit_column(model: Any, neuron: NeuronId) -> tuple[tuple[int, str], int] | None:
    """Where a weight edit of ``neuron`` acts: ``((layer, "down"), i)`` for FFN neuron ``i``
    (column ``i`` of ``down_proj``), ``((layer, "o"), h*d_head + j)`` for aggregated attention
    neuron ``(h, j)`` (column of ``o_proj``); None for a positional attention neuron (a hook,
    not a weight edit)."""
    if neuron.kind == "ffn":
        return (neuron.layer, "down"), int(neuron.index)
    if neuron.position is None:
        return (neuron.layer, "o"), int(neuron.head) * arch(model).d_head + int(neuron.dim)
    return None


def edit_module(model: Any, layer: int, which: str) -> torch.nn.Module:
    """The plain ``down_proj`` (``which="down"``) or ``o_proj`` (``"o"``) Linear of ``layer``."""
    lay = hf_layer(model, layer)
    return unwrap(unwrap(lay.mlp).down_proj if which == "down" else unwrap(lay.self_attn).o_proj)


def _column_edits(model: Any, neurons: Sequence[NeuronId]) -> list[_ColumnEdit]:
    """Group the weight-editable neurons by matrix: FFN -> down_proj, attention -> o_proj."""
    groups: dict[tuple[int, str], list[int]] = {}
    for n in neurons:
        where = edit_column(model, n)
        if where is not None:
            groups.setdefault(where[0], []).append(where[1])
    edits = []
    for (layer, which), cols in sorted(groups.items()):
        weight = edit_module(model, layer, which).weight
        idx = torch.tensor(sorted(set(cols)), dtype=torch.long, device=weight.device)
        edits.append(_ColumnEdit(weight, idx))
    return edits


# ----------------------------------------------------------------------------- positional hooks

_POSITION_HOOKS: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()


def has_position_hooks(model: Any) -> bool:
    """Whether a positional attention-neuron edit is active on ``model`` (no KV cache then)."""
    try:
        return _POSITION_HOOKS.get(model, 0) > 0
    except TypeError:
        return False


def _hook_point(model: Any, name: str):
    hp = getattr(model, "hook_dict", {}).get(name)
    if hp is None:
        raise EditError(
            f"Positional attention-neuron edits need the bridge hook {name!r}, which this model "
            "does not have. Edit the aggregated neuron (drop the P<position> suffix) instead: "
            "that is a weight edit of o_proj and needs no hooks."
        )
    return hp


class _PositionalMask:
    """Hooks that remove the value read from fixed source positions by some (head, dim)s."""

    def __init__(self, model: Any, layer: int, units: Sequence[tuple[int, int, int]], factor: float):
        a = arch(model)
        self.model = model
        self.layer = layer
        self.group = a.group
        self.scale = 1.0 - float(factor)
        self.heads = torch.tensor([u[0] for u in units], dtype=torch.long)
        self.dims = torch.tensor([u[1] for u in units], dtype=torch.long)
        self.pos = torch.tensor([u[2] for u in units], dtype=torch.long)
        self.kv = self.heads // self.group
        self.handles: list[tuple[Any, Any]] = []
        self.store: dict[str, torch.Tensor] = {}

    def _capture(self, key: str):
        def hook(tensor, hook):
            self.store[key] = tensor
            return None

        return hook

    def _edit_z(self, z, hook):
        pattern = self.store.pop("pattern", None)
        v = self.store.pop("v", None)
        if pattern is None or v is None:
            raise EditError(
                f"A positional attention-neuron edit on layer {self.layer} did not see the "
                "attention pattern and values of this forward pass (the attention module did "
                "not fire hook_pattern/hook_v). Edit the aggregated neuron instead."
            )
        t_q, t_k = pattern.shape[-2], pattern.shape[-1]
        if v.shape[1] != t_k or z.shape[1] != t_q or t_q != t_k:
            raise EditError(
                "Positional attention-neuron edits need full-sequence forward passes; this one "
                f"uses a KV cache (queries {t_q}, keys {t_k}, new values {v.shape[1]}). Score or "
                "generate without a cache (analysis_lib.scoring does), or edit the aggregated "
                "neuron (drop the P<position> suffix)."
            )
        keep = self.pos < t_k  # a prompt shorter than p + 1 has no position p
        if not bool(keep.any()):
            return None
        h, d, p, g = (x[keep].to(z.device) for x in (self.heads, self.dims, self.pos, self.kv))
        # pattern[b, h_u, q, p_u] * v[b, p_u, g_u, d_u] -> [b, q, u]
        # (advanced indices split by a slice go first: pattern[:, h, :, p] is [u, b, q])
        contrib = pattern[:, h, :, p].permute(1, 2, 0) * v[:, p, g, d][:, None, :]
        # several units may share (head, dim) with different positions: accumulate
        flat = z.reshape(*z.shape[:2], -1).clone()
        flat.index_add_(2, h * z.shape[-1] + d, contrib.to(z.dtype), alpha=-self.scale)
        return flat.view_as(z)

    def attach(self) -> None:
        base = f"blocks.{self.layer}.attn"
        plan = [
            (f"{base}.hook_v", self._capture("v")),
            (f"{base}.hook_pattern", self._capture("pattern")),
            (f"{base}.hook_z", self._edit_z),
        ]
        points = [(_hook_point(self.model, name), fn) for name, fn in plan]
        for hp, fn in points:
            # permanent: survives model.reset_hooks() inside the edited block
            self.handles.append((hp, hp.add_hook(fn, is_permanent=True)))

    def detach(self) -> None:
        for hp, handle in reversed(self.handles):
            handle.hook.remove()
            if handle in hp.fwd_hooks:
                hp.fwd_hooks.remove(handle)
        self.handles.clear()
        self.store.clear()


def _positional_masks(model: Any, neurons: Sequence[NeuronId], factor: float) -> list[_PositionalMask]:
    aggregated = {n for n in neurons if n.kind == "attn" and n.position is None}
    by_layer: dict[int, list[tuple[int, int, int]]] = {}
    for n in neurons:
        if n.kind != "attn" or n.position is None:
            continue
        if n.aggregated in aggregated:
            if factor == 0.0:
                continue  # already removed at every position by the o_proj edit
            raise EditError(
                f"{n} and {n.aggregated} are both in the edit; with factor {factor} the "
                "positional one would be scaled twice. Keep only one of them."
            )
        by_layer.setdefault(n.layer, []).append((int(n.head), int(n.dim), int(n.position)))
    return [_PositionalMask(model, layer, units, factor) for layer, units in sorted(by_layer.items())]


# ----------------------------------------------------------------------------- public edits


def _check_factor(factor: float) -> float:
    try:
        f = float(factor)
    except (TypeError, ValueError):
        raise EditError(f"factor must be a number, got {factor!r}.") from None
    if not math.isfinite(f):
        raise EditError(f"factor must be finite, got {factor!r}.")
    return f


class _Edit:
    """An applied edit: weight columns plus positional hooks; undo() restores everything."""

    def __init__(self, model: Any, neurons: Sequence[NeuronId], factor: float):
        self.model = model
        self.columns = _column_edits(model, neurons)
        self.masks = _positional_masks(model, neurons, factor)
        self.factor = factor
        self.done_columns: list[_ColumnEdit] = []
        self.done_masks: list[_PositionalMask] = []

    def apply(self) -> None:
        try:
            for c in self.columns:
                c.apply(self.factor)
                self.done_columns.append(c)
            for m in self.masks:
                m.attach()
                self.done_masks.append(m)
                _POSITION_HOOKS[self.model] = _POSITION_HOOKS.get(self.model, 0) + 1
        except BaseException:
            self.undo()
            raise
        finally:
            clear_model_cache(self.model)

    def undo(self) -> None:
        for m in reversed(self.done_masks):
            m.detach()
            _POSITION_HOOKS[self.model] = max(0, _POSITION_HOOKS.get(self.model, 1) - 1)
        for c in reversed(self.done_columns):
            c.restore()
        self.done_masks.clear()
        self.done_columns.clear()
        clear_model_cache(self.model)


@contextlib.contextmanager
def scale_neurons(model: Any, neurons: Any, factor: float) -> Iterator[list[NeuronId]]:
    """Multiply what each neuron writes by ``factor`` inside a ``with`` block.

    On exit, also after an exception, the model is restored bit-exactly (the edited weight
    columns are saved before the edit and copied back). Nested edits are undone in reverse
    order, so they compose.

    Args:
        model: a loaded bridge (edited in place).
        neurons: ids (strings or :class:`NeuronId`); see the module docstring for what each
            kind of id edits.
        factor: 0 ablates, 1 is a no-op, 2 doubles, -1 flips the sign.

    Yields:
        The parsed, validated, de-duplicated neuron ids.

    Raises:
        NeuronIdError: an id is malformed or out of range for ``model``.
        EditError: ``factor`` is not a finite number.
    """
    factor = _check_factor(factor)
    ids = resolve_neurons(model, neurons)
    edit = _Edit(model, ids, factor)
    edit.apply()
    try:
        yield ids
    finally:
        edit.undo()


@contextlib.contextmanager
def mask_neurons(model: Any, neurons: Any) -> Iterator[list[NeuronId]]:
    """Ablate (zero) neurons inside a ``with`` block; :func:`scale_neurons` with ``factor=0``.

    Example::

        with mask_neurons(model, ["ffnL2N7003", "attnL21H0D79"]):
            lp = next_token_logprobs(model, prompts)
    """
    with scale_neurons(model, neurons, 0.0) as ids:
        yield ids


def edited_copy(model: Any, neurons: Any, factor: float = 0.0) -> Any:
    """A deep copy of ``model`` with the neurons scaled by ``factor`` for good.

    The original is not touched. The copy carries ``edit_neurons`` (the ids) and
    ``edit_factor`` attributes. Positional attention neurons are installed as permanent hooks
    on the copy. The copy needs as much memory as the model. Called inside a weight edit's
    ``with`` block, the copy starts from the edited weights (they are what is copied).
    """
    factor = _check_factor(factor)
    ids = resolve_neurons(model, neurons)
    if has_position_hooks(model):
        raise EditError(
            "Make the copy outside the `with` block of a positional attention-neuron edit: its "
            "hooks belong to the original model and would not carry over cleanly."
        )
    new = copy.deepcopy(model)
    _Edit(new, ids, factor).apply()
    object.__setattr__(new, "edit_neurons", [str(n) for n in ids])
    object.__setattr__(new, "edit_factor", factor)
    return new


def masked_copy(model: Any, neurons: Any) -> Any:
    """A deep copy of ``model`` with ``neurons`` ablated (the original stays bit-identical)."""
    return edited_copy(model, neurons, 0.0)


# ----------------------------------------------------------------------------- saved edits


@dataclass
class EditSpec:
    """A neuron edit as data, saved as JSON by :func:`save_edit`.

    Attributes:
        neurons: neuron ids as strings (``"ffnL2N7003"``, ``"attnL21H0D79"``...).
        model: the study name of the model they were found in (``model.study_name``).
        start_token: the start-token policy in force when they were found
            (``model.start_token``; ``None`` for no start token).
        factor: what the neurons' outputs are multiplied by (0 = ablation).
        selection: how the neurons were chosen, in words (e.g. "top-50 by masking effect on
            train words, chapter 5, seed 0").
        metadata: anything else JSON can hold (scores, parameters, versions).
    """

    neurons: list[str]
    model: str
    start_token: str | None
    factor: float = 0.0
    selection: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.neurons, (str, NeuronId)):
            self.neurons = [self.neurons]
        parsed = []
        for k, raw in enumerate(self.neurons):
            try:
                parsed.append(str(NeuronId.parse(raw)))
            except NeuronIdError as exc:
                raise NeuronIdError(f"Edit neuron entry {k} ({raw!r}): {exc}") from None
        self.neurons = parsed
        self.factor = _check_factor(self.factor)
        if not isinstance(self.model, str) or not self.model:
            raise EditError(f"EditSpec.model must be the model's study name, got {self.model!r}.")

    @classmethod
    def from_model(
        cls,
        model: Any,
        neurons: Any,
        *,
        factor: float = 0.0,
        selection: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> "EditSpec":
        """An edit of ``neurons`` in ``model`` (ids validated; model name and start token read)."""
        ids = resolve_neurons(model, neurons)
        return cls(
            neurons=[str(n) for n in ids],
            model=_model_name(model),
            start_token=getattr(model, "start_token", None),
            factor=factor,
            selection=selection,
            metadata=dict(metadata or {}),
        )

    @property
    def ids(self) -> list[NeuronId]:
        return [NeuronId.parse(n) for n in self.neurons]

    def to_dict(self) -> dict[str, Any]:
        return {"format": EDIT_FORMAT, **asdict(self)}


def _model_name(model: Any) -> str:
    name = getattr(model, "study_name", None)
    if not name:
        raise EditError(
            "This model has no study_name; load it with analysis_lib.models.load_model so an "
            "edit can record which model it belongs to."
        )
    return str(name)


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (Path, NeuronId)):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def save_edit(
    path: str | Path,
    edit: "EditSpec | Iterable[Any]",
    *,
    model: Any = None,
    factor: float = 0.0,
    selection: str = "",
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write an edit to a JSON file and return its path.

    Either pass an :class:`EditSpec`, or the neuron ids with ``model=`` (a loaded bridge:
    its name and start-token policy are recorded and the ids validated against it).

    Raises:
        EditError: ids given without a model, or metadata that JSON cannot hold.
    """
    if not isinstance(edit, EditSpec):
        if model is None or isinstance(model, str):
            raise EditError(
                "save_edit(path, neurons, model=...) needs the loaded model (to record its name "
                "and start token and check the ids); or pass an EditSpec."
            )
        edit = EditSpec.from_model(model, edit, factor=factor, selection=selection, metadata=metadata)
    path = Path(path)
    try:
        text = json.dumps(edit.to_dict(), indent=1, default=_json_default, allow_nan=True)
    except TypeError as exc:
        raise EditError(f"The edit's metadata cannot be saved as JSON: {exc}.") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)
    return path


def load_edit(path: str | Path) -> EditSpec:
    """Read an edit written by :func:`save_edit`.

    Raises:
        EditError: the file is missing, not JSON, of an unknown format or lacks a field.
        NeuronIdError: a neuron id in it is malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise EditError(f"No edit file at {path}. Save one with analysis_lib.editing.save_edit.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EditError(f"{path} is not valid JSON ({exc}); it is not an edit file.") from None
    if not isinstance(data, dict):
        raise EditError(f"{path} does not hold an edit (a JSON object is expected).")
    fmt = data.pop("format", None)
    if fmt != EDIT_FORMAT:
        raise EditError(f"{path} has edit format {fmt!r}; this version reads format {EDIT_FORMAT}.")
    missing = [k for k in ("neurons", "model", "start_token") if k not in data]
    if missing:
        raise EditError(f"{path} lacks the field(s) {missing}; it is not a complete edit file.")
    known = {"neurons", "model", "start_token", "factor", "selection", "metadata"}
    extra = sorted(set(data) - known)
    if extra:
        raise EditError(f"{path} has unknown field(s) {extra}; it was not written by save_edit.")
    spec = EditSpec(**data)
    if not spec.neurons:
        raise EditError(
            f"{path} lists no neurons: applying it would change nothing, and evaluating it would report a "
            "difference of exactly 0. Save an edit with at least one neuron (analysis_lib.editing.save_edit)."
        )
    return spec


@contextlib.contextmanager
def apply_edit(model: Any, edit: "EditSpec | str | Path", *, check_start_token: bool = True) -> Iterator[EditSpec]:
    """Apply a saved edit inside a ``with`` block (restored on exit, like :func:`scale_neurons`).

    Args:
        model: a loaded bridge.
        edit: an :class:`EditSpec` or the path of a JSON file from :func:`save_edit`.
        check_start_token: refuse a model whose start-token policy differs from the one the
            edit was found under (general neurons depend on it, method_spec §6 A3).

    Raises:
        EditError: the edit belongs to another model or start-token policy.
        NeuronIdError: an id is out of range for ``model``.
    """
    if not isinstance(edit, EditSpec):
        edit = load_edit(edit)
    name = _model_name(model)
    if edit.model != name:
        raise EditError(
            f"This edit was made for model {edit.model!r} but is applied to {name!r}. Neuron ids "
            f"do not carry over between models; load {edit.model!r} "
            f"(analysis_lib.models.load_model({edit.model!r})) or select neurons for {name!r}."
        )
    start = getattr(model, "start_token", None)
    if check_start_token and edit.start_token != start:
        raise EditError(
            f"This edit was found with start token {edit.start_token!r} but the model runs with "
            f"{start!r}. Load the model with load_model({name!r}, start_token={edit.start_token!r}) "
            "or pass check_start_token=False to apply it anyway."
        )
    with scale_neurons(model, edit.neurons, edit.factor):
        yield edit
