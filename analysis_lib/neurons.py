"""Neuron identities and generic access to the raw weights behind a ``TransformerBridge``.

**Names** (paper 1's convention, method_spec §1.1):

* FFN neuron ``ffnL{layer}N{index}``, e.g. ``ffnL2N7003``: unit ``index`` of the gated MLP of
  layer ``layer`` (coefficient ``m = act(gate(x)) * up(x)``, output vector = column ``index`` of
  ``down_proj.weight``). The same id names a "value" and a "query" FFN neuron: value/query is the
  way it is *scored*, not a different unit.
* attention value neuron ``attnL{layer}H{head}D{dim}P{position}``, e.g. ``attnL21H0D79P3``:
  query head ``head``, value dimension ``dim`` (``0 <= dim < d_head``), source position
  ``position`` (0 = the first input token, i.e. the start token). Its subvalue at the last
  position is ``alpha[head, T-1, position] * v[position, g(head), dim] * o_proj.weight[:, head*d_head+dim]``,
  with ``g(h) = h // (n_heads / n_kv_heads)`` (grouped-query attention).
* aggregated attention neuron ``attnL{layer}H{head}D{dim}`` (no position): the same unit summed
  over source positions (used for dataset rankings and for editing, which acts on
  ``o_proj.weight[:, head*d_head+dim]`` at every position).

**Weights.** The bridge keeps the raw Hugging Face weights: the final RMSNorm gain is *not*
folded into the unembedding. Everything here reads the live HF modules
(``model.original_model.model.layers[l]``, ``.model.norm``, ``.lm_head``), so an edit of the
weights is seen at once. Norm gains are read through :func:`norm_gain`, which handles both the
Llama/Qwen form ``w * x / rms(x)`` and the Gemma form ``(1 + w) * x / rms(x)``.

**Sandwich norms** (Gemma 2/3: ``post_attention_layernorm`` on the attention output and
``post_feedforward_layernorm`` on the MLP output) are reported by :func:`arch` as
``sandwich=True``; see :mod:`analysis_lib.attribution` for how the decomposition handles them.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import NeuronIdError

# ----------------------------------------------------------------------------- neuron ids

FORMAT_HELP = (
    "Expected ffnL{layer}N{index} (e.g. ffnL2N7003), attnL{layer}H{head}D{dim}P{position} "
    "(e.g. attnL21H0D79P3; position 0 is the start token) or attnL{layer}H{head}D{dim} "
    "(an attention neuron summed over positions)."
)
_FFN_RE = re.compile(r"^ffnL(\d+)N(\d+)$", re.IGNORECASE)
_ATTN_RE = re.compile(r"^attnL(\d+)H(\d+)D(\d+)(?:P(\d+))?$", re.IGNORECASE)


@dataclass(frozen=True)
class NeuronId:
    """The identity of one neuron, printed in the paper's naming.

    Examples:
        >>> str(NeuronId("ffn", layer=2, index=7003))
        'ffnL2N7003'
        >>> NeuronId.parse("attnL21H0D79P3")
        NeuronId('attnL21H0D79P3')

    Attributes:
        kind: ``"ffn"`` or ``"attn"``.
        layer: layer index (0-based).
        index: FFN unit index (``ffn`` only).
        head: query head (``attn`` only).
        dim: value dimension inside the head (``attn`` only).
        position: source position of an attention neuron, 0 = start token; ``None`` for the
            neuron summed over positions.
    """

    kind: str
    layer: int
    index: int | None = None
    head: int | None = None
    dim: int | None = None
    position: int | None = None

    def __post_init__(self) -> None:
        def bad(why: str) -> NeuronIdError:
            return NeuronIdError(f"Invalid neuron {self._fields()}: {why}. {FORMAT_HELP}")

        if self.kind not in ("ffn", "attn"):
            raise bad("kind must be 'ffn' or 'attn'")
        for name in ("layer", "index", "head", "dim", "position"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool):
                raise bad(f"{name} must be an integer, not a bool")
            if not isinstance(value, int):
                try:  # numpy / torch integers
                    as_int = int(value)
                except (TypeError, ValueError):
                    raise bad(f"{name} must be an integer") from None
                if as_int != value:
                    raise bad(f"{name} must be an integer")
                object.__setattr__(self, name, as_int)
                value = as_int
            if value < 0:
                raise bad(f"{name} must be >= 0")
        if self.kind == "ffn":
            if self.index is None:
                raise bad("an FFN neuron needs index")
            if self.head is not None or self.dim is not None or self.position is not None:
                raise bad("an FFN neuron has no head, dim or position")
        else:
            if self.head is None or self.dim is None:
                raise bad("an attention neuron needs head and dim")
            if self.index is not None:
                raise bad("an attention neuron has no index")

    def _fields(self) -> str:
        parts = [f"kind={self.kind!r}", f"layer={self.layer!r}"]
        for name in ("index", "head", "dim", "position"):
            if getattr(self, name) is not None:
                parts.append(f"{name}={getattr(self, name)!r}")
        return "(" + ", ".join(parts) + ")"

    # -- formatting / parsing

    def __str__(self) -> str:
        if self.kind == "ffn":
            return f"ffnL{self.layer}N{self.index}"
        s = f"attnL{self.layer}H{self.head}D{self.dim}"
        return s if self.position is None else s + f"P{self.position}"

    def __repr__(self) -> str:
        return f"NeuronId({str(self)!r})"

    @classmethod
    def parse(cls, text: "str | NeuronId") -> "NeuronId":
        """Parse ``ffnL2N7003`` / ``attnL21H0D79P3`` / ``attnL21H0D79`` (case-insensitive).

        Raises:
            NeuronIdError: the string does not match the format (the message shows it).
        """
        if isinstance(text, NeuronId):
            return text
        if not isinstance(text, str):
            raise NeuronIdError(f"A neuron id must be a string, got {type(text).__name__}. {FORMAT_HELP}")
        s = text.strip()
        if mt := _FFN_RE.match(s):
            return cls("ffn", layer=int(mt[1]), index=int(mt[2]))
        if mt := _ATTN_RE.match(s):
            pos = None if mt[4] is None else int(mt[4])
            return cls("attn", layer=int(mt[1]), head=int(mt[2]), dim=int(mt[3]), position=pos)
        raise NeuronIdError(f"Cannot parse neuron id {text!r}. {FORMAT_HELP}")

    # -- helpers

    @property
    def aggregated(self) -> "NeuronId":
        """The same neuron without a position (attention); FFN ids are returned unchanged."""
        if self.kind == "attn" and self.position is not None:
            return NeuronId("attn", layer=self.layer, head=self.head, dim=self.dim)
        return self

    def at(self, position: int) -> "NeuronId":
        """This attention neuron at a source position."""
        if self.kind != "attn":
            raise NeuronIdError(f"{self} is an FFN neuron: it has no source position.")
        return NeuronId("attn", layer=self.layer, head=self.head, dim=self.dim, position=position)

    def sort_key(self) -> tuple:
        """A total order: FFN before attention, then layer, unit, position."""
        if self.kind == "ffn":
            return (0, self.layer, self.index, 0, 0, -1)
        return (1, self.layer, self.head, self.dim, 0, -1 if self.position is None else self.position)

    def validate(self, model_or_cfg: Any, seq_len: int | None = None) -> "NeuronId":
        """Check the id against a model (or its ``cfg``); return it unchanged.

        Args:
            model_or_cfg: a bridge or a TransformerLens config (``n_layers``, ``d_mlp``,
                ``n_heads``, ``d_head``).
            seq_len: the prompt length, to check an attention neuron's position.

        Raises:
            NeuronIdError: a field is out of range (the message gives the valid range).
        """
        cfg = getattr(model_or_cfg, "cfg", model_or_cfg)
        name = getattr(model_or_cfg, "study_name", None) or getattr(cfg, "model_name", "this model")
        limits: list[tuple[str, int | None, int]] = [("layer", self.layer, int(cfg.n_layers))]
        if self.kind == "ffn":
            limits.append(("index", self.index, int(cfg.d_mlp)))
        else:
            limits += [("head", self.head, int(cfg.n_heads)), ("dim", self.dim, int(cfg.d_head))]
            if seq_len is not None and self.position is not None:
                limits.append(("position", self.position, int(seq_len)))
        for field_name, value, limit in limits:
            if value is not None and value >= limit:
                raise NeuronIdError(
                    f"Neuron {self} is out of range for {name}: {field_name} {value} must be "
                    f"< {limit} (valid {field_name}s are 0..{limit - 1})."
                )
        return self


def as_neuron(neuron: "str | NeuronId", model: Any = None, seq_len: int | None = None) -> NeuronId:
    """A :class:`NeuronId` from a string or id, validated against ``model`` when given."""
    n = NeuronId.parse(neuron)
    if model is not None:
        n.validate(model, seq_len)
    return n


# ----------------------------------------------------------------------------- module access


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The plain Hugging Face module inside a bridge wrapper (or the module itself)."""
    while hasattr(module, "_original_component"):
        module = module._original_component
    return module


def hf_model(model: Any) -> torch.nn.Module:
    """The Hugging Face ``*ForCausalLM`` behind a bridge (or the HF model itself)."""
    return getattr(model, "original_model", model)


def hf_layer(model: Any, layer: int) -> torch.nn.Module:
    """``model.original_model.model.layers[layer]`` unwrapped."""
    return unwrap(hf_model(model).model.layers[layer])


def lm_head(model: Any) -> torch.nn.Module:
    return unwrap(hf_model(model).lm_head)


def final_norm(model: Any) -> torch.nn.Module:
    return unwrap(hf_model(model).model.norm)


_NORM_OFFSET: dict[str, float] = {}


def _norm_eps(norm: torch.nn.Module) -> float:
    for name in ("variance_epsilon", "eps", "epsilon"):
        if hasattr(norm, name):
            return float(getattr(norm, name))
    return 1e-6


def norm_gain(norm: torch.nn.Module) -> Float[Tensor, "d_model"]:
    """The effective elementwise gain ``g`` of an RMSNorm: ``norm(x) = g * x / rms(x)``.

    Llama/Qwen2 norms use ``g = weight``; Gemma norms use ``g = 1 + weight``. Which one a norm
    class uses is found once per class by probing it with a constant vector (whose rms is known
    exactly) and cached; the returned gain is built from the live weight.
    """
    norm = unwrap(norm)
    w = norm.weight.detach()
    key = type(norm).__name__
    if key not in _NORM_OFFSET:
        c = 100.0
        x = torch.full((1, w.shape[0]), c, dtype=torch.float32, device=w.device)
        with torch.no_grad():
            out = norm(x.to(w.dtype)).float()[0]
        probed = out * (c * c + _norm_eps(norm)) ** 0.5 / c
        offsets = {0.0: (probed - w.float()).abs().max().item(), 1.0: (probed - 1 - w.float()).abs().max().item()}
        best = min(offsets, key=offsets.get)
        scale = 1e-3 * max(1.0, w.float().abs().max().item())
        if offsets[best] > scale:
            raise NotImplementedError(
                f"Normalization {key} is neither weight*x/rms(x) nor (1+weight)*x/rms(x) "
                f"(probe mismatch {offsets[best]:.3g}); attribution does not support it."
            )
        _NORM_OFFSET[key] = best
    return w + _NORM_OFFSET[key] if _NORM_OFFSET[key] else w


def final_norm_gain(model: Any) -> Float[Tensor, "d_model"]:
    """Effective gain of the final norm (``model.norm.weight``, or ``1 + weight`` for Gemma)."""
    return norm_gain(final_norm(model))


def unembed(model: Any) -> tuple[Float[Tensor, "d_vocab d_model"], Float[Tensor, "d_vocab"] | None]:
    """``(lm_head.weight, lm_head.bias or None)``; an all-zero bias is returned as ``None``."""
    head = lm_head(model)
    b = getattr(head, "bias", None)
    if b is not None:
        b = b.detach()
        if not bool(b.any()):
            b = None
    return head.weight.detach(), b


@dataclass(frozen=True)
class Arch:
    """Architecture facts that the attribution formulas depend on.

    Attributes:
        n_layers, d_model, d_mlp, n_heads, n_kv_heads, d_head, d_vocab: sizes.
        sandwich: the block normalizes the attention and MLP outputs before adding them to the
            residual (Gemma 2/3 ``post_attention_layernorm`` / ``post_feedforward_layernorm``).
        softcap: ``final_logit_softcapping`` (``None`` when logits are not soft-capped).
        v_bias, o_bias, mlp_bias: whether v_proj / o_proj / down_proj carry a bias.
    """

    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_vocab: int
    sandwich: bool
    softcap: float | None
    v_bias: bool
    o_bias: bool
    mlp_bias: bool

    @property
    def group(self) -> int:
        """Query heads per KV head: query head h reads KV head ``h // group``."""
        return self.n_heads // self.n_kv_heads


def _config_get(config: Any, name: str) -> Any:
    value = getattr(config, name, None)
    if value is None and getattr(config, "text_config", None) is not None:
        value = getattr(config.text_config, name, None)
    return value


def arch(model: Any) -> Arch:
    """The :class:`Arch` of a loaded bridge (read from the HF modules and config)."""
    hf = hf_model(model)
    layers = hf.model.layers
    lay0 = unwrap(layers[0])
    attn, mlp = unwrap(lay0.self_attn), unwrap(lay0.mlp)
    for name in ("gate_proj", "up_proj", "down_proj"):
        if not hasattr(mlp, name):
            raise NotImplementedError(
                f"Attribution expects a gated MLP (gate_proj/up_proj/down_proj); "
                f"{type(mlp).__name__} has no {name}."
            )
    if hasattr(attn, "v_norm") and not isinstance(unwrap(attn.v_norm), torch.nn.Identity):
        raise NotImplementedError("Attention with a value norm (v_norm) is not linear in v_proj; not supported.")
    n_heads = int(_config_get(hf.config, "num_attention_heads"))
    n_kv = int(_config_get(hf.config, "num_key_value_heads") or n_heads)
    d_head = int(attn.v_proj.weight.shape[0] // n_kv)
    d_model = int(attn.v_proj.weight.shape[1])
    softcap = _config_get(hf.config, "final_logit_softcapping")
    return Arch(
        n_layers=len(layers),
        d_model=d_model,
        d_mlp=int(mlp.down_proj.weight.shape[1]),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_head=d_head,
        d_vocab=int(lm_head(model).weight.shape[0]),
        sandwich=hasattr(lay0, "pre_feedforward_layernorm") and hasattr(lay0, "post_feedforward_layernorm"),
        softcap=None if softcap is None else float(softcap),
        v_bias=getattr(attn.v_proj, "bias", None) is not None,
        o_bias=getattr(attn.o_proj, "bias", None) is not None,
        mlp_bias=getattr(mlp.down_proj, "bias", None) is not None,
    )


@dataclass(frozen=True)
class LayerWeights:
    """Live views of one layer's weights (no copies).

    Attributes:
        down: ``down_proj.weight`` ``[d_model, d_mlp]``; FFN neuron i writes ``m_i * down[:, i]``.
        o: ``o_proj.weight`` ``[d_model, n_heads*d_head]``.
        v: ``v_proj.weight`` ``[n_kv*d_head, d_model]``.
        v_bias: ``v_proj.bias`` or ``None``.
        ln_attn: gain of the pre-attention norm (``input_layernorm``).
        ln_mlp: gain of the pre-MLP norm (``post_attention_layernorm`` in Llama/Qwen,
            ``pre_feedforward_layernorm`` in Gemma).
        post_attn, post_mlp: gains of the sandwich output norms (``None`` when absent).
    """

    down: Float[Tensor, "d_model d_mlp"]
    o: Float[Tensor, "d_model n_heads_x_d_head"]
    v: Float[Tensor, "n_kv_x_d_head d_model"]
    v_bias: Float[Tensor, "n_kv_x_d_head"] | None
    ln_attn: Float[Tensor, "d_model"]
    ln_mlp: Float[Tensor, "d_model"]
    post_attn: Float[Tensor, "d_model"] | None
    post_mlp: Float[Tensor, "d_model"] | None


def layer_weights(model: Any, layer: int) -> LayerWeights:
    """The :class:`LayerWeights` of one layer."""
    lay = hf_layer(model, layer)
    attn, mlp = unwrap(lay.self_attn), unwrap(lay.mlp)
    sandwich = hasattr(lay, "pre_feedforward_layernorm")
    vb = getattr(attn.v_proj, "bias", None)
    return LayerWeights(
        down=mlp.down_proj.weight.detach(),
        o=attn.o_proj.weight.detach(),
        v=attn.v_proj.weight.detach(),
        v_bias=None if vb is None else vb.detach(),
        ln_attn=norm_gain(lay.input_layernorm),
        ln_mlp=norm_gain(lay.pre_feedforward_layernorm if sandwich else lay.post_attention_layernorm),
        post_attn=norm_gain(lay.post_attention_layernorm) if sandwich else None,
        post_mlp=norm_gain(lay.post_feedforward_layernorm) if sandwich else None,
    )


def output_vector(model: Any, neuron: "str | NeuronId") -> Float[Tensor, "d_model"]:
    """The vector a neuron writes into the residual per unit of activation.

    FFN: ``down_proj.weight[:, index]``; attention: ``o_proj.weight[:, head*d_head + dim]``.
    With sandwich norms the output norm's gain is applied (the per-prompt ``1/rms`` factor is
    not, see :mod:`analysis_lib.attribution`).
    """
    n = as_neuron(neuron, model)
    a = arch(model)
    w = layer_weights(model, n.layer)
    if n.kind == "ffn":
        vec = w.down[:, n.index]
        return vec * w.post_mlp if w.post_mlp is not None else vec.clone()
    vec = w.o[:, n.head * a.d_head + n.dim]
    return vec * w.post_attn if w.post_attn is not None else vec.clone()


# ----------------------------------------------------------------------------- per-model caches

_MODEL_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def model_cache(model: Any) -> dict:
    """A dict that lives as long as ``model`` (for derived constants)."""
    try:
        return _MODEL_CACHE.setdefault(model, {})
    except TypeError:  # not weak-referenceable
        return {}


def clear_model_cache(model: Any) -> None:
    """Forget the derived constants of ``model`` (call after editing weights through ``.data``)."""
    _MODEL_CACHE.pop(model, None)


def weights_version(model: Any) -> tuple:
    """A cheap key that changes when any parameter is replaced or modified in place.

    In-place edits through ``param.data`` are invisible to it; call :func:`clear_model_cache`
    after such edits.
    """
    return tuple((p.data_ptr(), p._version) for p in hf_model(model).parameters())


def sample_matched(model: Any, neurons: "list[str | NeuronId]", seed: int) -> list[str]:
    """A random control set matched to ``neurons`` in number, kind and layer.

    For every layer, as many FFN neurons as ``neurons`` has FFN neurons in that layer (uniform
    over the layer's ``d_mlp`` units) and as many aggregated attention neurons as it has there
    (uniform over the layer's ``n_heads x d_head`` units), without replacement and never one of
    ``neurons``; drawn from ``numpy.random.default_rng(seed)``, layer by layer in increasing
    order (FFN before attention), so the same seed gives the same set.
    """
    import numpy as np

    a = arch(model)
    ids = [as_neuron(n) for n in neurons]
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for layer in sorted({n.layer for n in ids}):
        for kind, size in (("ffn", a.d_mlp), ("attn", a.n_heads * a.d_head)):
            own = [n for n in ids if n.layer == layer and n.kind == kind]
            if not own:
                continue
            taken = {n.index if kind == "ffn" else n.head * a.d_head + n.dim for n in own}
            pool = np.setdiff1d(np.arange(size), np.fromiter(taken, int))
            for i in rng.choice(pool, size=len(own), replace=False):
                i = int(i)
                out.append(str(NeuronId("ffn", layer=layer, index=i)) if kind == "ffn"
                           else str(NeuronId("attn", layer=layer, head=i // a.d_head, dim=i % a.d_head)))
    return out
