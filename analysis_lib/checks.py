"""Checks a learner runs on their own implementation (ARENA ``tests.py`` style).

Each ``check_*`` function calls the learner's function on fixed cases, compares the answer to
the study's reference implementation with an explicit tolerance, prints one sentence (what
is right, or what is wrong and where) and returns a :class:`CheckResult` that is truthy when
the implementation passed. Checks never raise on a wrong answer, so an exercise cell in a
notebook does not turn into an error output.

Example::

    from analysis_lib import checks
    def icat(lms, ss):
        return lms * min(ss, 100 - ss) / 50
    checks.check_icat(icat)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .commonwords import GENDER_TARGETS, TARGETS, word_variants
from .editing import mask_neurons
from .errors import TokenizationError
from .metrics import bbq_scores, icat, relative_bias_reduction, winogender_entropy_difference
from .models import encode, single_token_id
from .neurons import NeuronId
from .reference import ffn_log_prob_increase


@dataclass(frozen=True)
class CheckResult:
    """Outcome of a check: ``passed`` and the one-sentence ``message``."""

    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return self.message

    def _ipython_display_(self) -> None:
        """Show nothing as a cell's last value: the check already printed its message."""


def _report(passed: bool, message: str) -> CheckResult:
    result = CheckResult(passed, message)
    print(("✔ " if passed else "✘ ") + message)
    return result


def _call(fn: Callable, *args: Any) -> tuple[Any, str | None]:
    try:
        return fn(*args), None
    except Exception as exc:  # noqa: BLE001 - the learner's code may raise anything
        return None, f"{type(exc).__name__}: {exc}"


def _compare_cases(name: str, fn: Callable, reference: Callable, cases: list[tuple], tol: float) -> CheckResult:
    for args in cases:
        got, err = _call(fn, *args)
        want = reference(*args)
        if err is not None:
            return _report(False, f"{name}{args} raised {err}.")
        try:
            got_f = float(got)
        except (TypeError, ValueError):
            return _report(False, f"{name}{args} returned {got!r}, which is not a number.")
        if not math.isclose(got_f, float(want), rel_tol=tol, abs_tol=tol):
            return _report(False, f"{name}{args} returned {got_f:.6g} but the reference gives {float(want):.6g} "
                                  f"(tolerance {tol:g}).")
    return _report(True, f"{name} matches the reference on {len(cases)} cases (tolerance {tol:g}).")


# ----------------------------------------------------------------------------- metrics


def check_bias_score(fn: Callable[[float, float], float], tol: float = 1e-9) -> CheckResult:
    """``fn(logp_man, logp_woman)`` must return ``b = log p(man) - log p(woman)``."""
    cases = [(-2.0, -3.0), (-5.5, -1.25), (-0.7, -0.7), (-12.0, -30.0)]
    return _compare_cases("bias_score", fn, lambda m, w: m - w, cases, tol)


def check_icat(fn: Callable[[float, float], float], tol: float = 1e-9) -> CheckResult:
    """``fn(lms, ss)`` must return StereoSet's ICAT = LMS·min(SS, 100−SS)/50."""
    cases = [(100.0, 50.0), (90.0, 60.0), (80.0, 35.0), (50.0, 100.0), (72.5, 41.0)]
    return _compare_cases("icat", fn, icat, cases, tol)


def check_entropy_difference(fn: Callable[[np.ndarray, np.ndarray], float], tol: float = 1e-9) -> CheckResult:
    """``fn(lp_he, lp_she)`` (arrays) must return 1 − mean binary entropy in bits."""
    rng = np.random.default_rng(0)
    cases = [(np.log([0.5, 0.9]), np.log([0.5, 0.1])), (rng.normal(size=7), rng.normal(size=7))]
    for lp_he, lp_she in cases:
        got, err = _call(fn, lp_he, lp_she)
        if err is not None:
            return _report(False, f"entropy_difference raised {err}.")
        want = winogender_entropy_difference(lp_he, lp_she)
        if got is None or not math.isclose(float(got), want, abs_tol=tol):
            hint = " (did you use natural logarithms instead of bits?)" if got is not None and math.isclose(
                1 - (1 - float(got)) / math.log(2), want, abs_tol=1e-6) else ""
            return _report(False, f"entropy_difference returned {got} but the reference gives {want:.6g}{hint}.")
    return _report(True, f"entropy_difference matches the reference on {len(cases)} cases (tolerance {tol:g}).")


# ----------------------------------------------------------------------------- neurons


def check_neuron_name(fn: Callable[..., str]) -> CheckResult:
    """``fn(kind, layer, index_or_head, dim=None, position=None)`` must format paper-style names."""
    cases = [(("ffn", 2, 7003), {}, NeuronId("ffn", layer=2, index=7003)),
             (("attn", 18, 7), {"dim": 40, "position": 0}, NeuronId("attn", layer=18, head=7, dim=40, position=0))]
    for args, kwargs, ref in cases:
        got, err = _call(lambda: fn(*args, **kwargs))
        if err is not None:
            return _report(False, f"neuron_name{args} raised {err}.")
        if got != str(ref):
            return _report(False, f"neuron_name{args} returned {got!r}; the paper's format is {str(ref)!r}.")
    return _report(True, "neuron_name formats FFN and attention neuron ids like the paper.")


def check_start_position(fn: Callable[[str], int]) -> CheckResult:
    """``fn(neuron_id)`` must return the source position of an attention neuron id string."""
    cases = {"attnL18H7D40P0": 0, "attnL3H2D17P5": 5, "attnL29H8D63P12": 12}
    for text, want in cases.items():
        got, err = _call(fn, text)
        if err is not None:
            return _report(False, f"position({text!r}) raised {err}.")
        if got != want:
            return _report(False, f"position({text!r}) returned {got!r}, expected {want} (the number after 'P').")
    return _report(True, f"position reads the source position of {len(cases)} attention neuron ids correctly.")


def check_log_prob_increase(
    fn: Callable[..., float], model, *, prompt: str = "The nurse is a", target: str = GENDER_TARGETS[1],
    neuron: str = "ffnL20N100", tol: float = 1e-4,
) -> CheckResult:
    """``fn(model, prompt, target, layer, index)`` must return the FFN neuron's log-probability increase.

    The reference is the study's exact attribution engine: the neuron's subvalue (coefficient
    at the last position × output row) added to the residual before its FFN layer, read out with
    the final norm scale held fixed.
    """
    nid = NeuronId.parse(neuron)
    want = ffn_log_prob_increase(model, prompt, target, nid.layer, nid.index)
    got, err = _call(fn, model, prompt, target, nid.layer, nid.index)
    if err is not None:
        return _report(False, f"log_prob_increase raised {err}.")
    try:
        got_f = float(got)
    except (TypeError, ValueError):
        return _report(False, f"log_prob_increase returned {got!r}, which is not a number.")
    if not math.isclose(got_f, want, abs_tol=tol):
        return _report(False, f"log_prob_increase for {neuron} returned {got_f:.6g} but the reference gives {want:.6g}"
                              " (is the final norm scale taken from the real forward pass and held fixed?).")
    return _report(True, f"log_prob_increase of {neuron} matches the reference ({want:.6g}, tolerance {tol:g}).")


# ----------------------------------------------------------------------------- data (chapter 1)


def check_single_token(fn: Callable[[Any, str], bool], model) -> CheckResult:
    """``fn(model, text)`` must say whether ``text`` is exactly one token for the model.

    The start token is not part of the text: the female target (`` woman``) is one token for
    SmolLM2 even though the encoded prompt ``<start> woman`` has two.
    """
    texts = [*GENDER_TARGETS, *TARGETS["pronoun"], " nurse", " engineer", " saxophone", " turquoise",
             " daydreaming", "woman", " Man"]

    def reference(text: str) -> bool:
        try:
            single_token_id(model, text)
            return True
        except TokenizationError:
            return False

    for text in texts:
        got, err = _call(fn, model, text)
        if err is not None:
            return _report(False, f"is_single_token({text!r}) raised {err}.")
        want = reference(text)
        if bool(got) != want or not isinstance(got, (bool, np.bool_)):
            hint = " (leave the start token out of the count)" if want and not got else ""
            return _report(False, f"is_single_token({text!r}) returned {got!r}, expected {want}{hint}.")
    return _report(True, f"is_single_token agrees with the model's tokenizer on {len(texts)} texts.")


def check_same_word(fn: Callable[[str, str], bool]) -> CheckResult:
    """``fn(word, term)`` must apply chapter 1's overlap rule (case and a final s/es/ies ignored)."""
    cases = [("nurse", "Nurses"), ("cook", "cooks"), ("baby", "babies"), ("glass", "glasses"),
             ("teacher", "teach"), ("chess", "chess player"), ("red", "Red"), ("bus", "bus"),
             ("kind", "mankind"), ("dance", "dancer")]
    for word, term in cases:
        got, err = _call(fn, word, term)
        if err is not None:
            return _report(False, f"same_word({word!r}, {term!r}) raised {err}.")
        want = bool(word_variants(word) & word_variants(term))
        if got is None or bool(got) != want:
            return _report(False, f"same_word({word!r}, {term!r}) returned {got!r}, expected {want}.")
    return _report(True, f"same_word applies the overlap rule correctly on {len(cases)} pairs.")


# ----------------------------------------------------------------------------- ablations (chapter 4)


def check_empirical_p(fn: Callable[[float, Any], float], tol: float = 1e-12) -> CheckResult:
    """``fn(observed, random_values)`` must return the one-sided permutation p-value
    ``(1 + #{random >= observed}) / (1 + n)`` (large values = more damage)."""

    def reference(observed, random_values):
        r = np.asarray(random_values, dtype=float)
        return (1 + int((r >= observed).sum())) / (1 + r.size)

    cases = [(0.30, [0.01, 0.02, 0.0, 0.05]), (0.02, [0.01, 0.02, 0.0, 0.05]),
             (-0.1, [0.0] * 19), (0.5, np.linspace(0, 1, 20))]
    for observed, values in cases:
        got, err = _call(fn, observed, values)
        if err is not None:
            return _report(False, f"empirical_p({observed}, ...) raised {err}.")
        want = reference(observed, values)
        if got is None or not math.isclose(float(got), want, abs_tol=tol):
            hint = (" (count the observed value itself: add 1 above and below)"
                    if got is not None and math.isclose(float(got), (want * (1 + len(values)) - 1) / len(values))
                    else "")
            return _report(False, f"empirical_p({observed}, {len(values)} draws) returned {got!r}, expected "
                                  f"{want:.6g}{hint}.")
    return _report(True, f"empirical_p matches the reference on {len(cases)} cases, ties included.")


def check_masked_logits(fn: Callable[..., Any], model, *, prompt: str = "3+5=",
                        neurons: tuple[str, ...] = ("ffnL11N1229", "ffnL11N1487"), tol: float = 1e-4) -> CheckResult:
    """``fn(model, prompt, [(layer, index), ...])`` must return the last position's logits with
    those FFN neurons zeroed at every position, and leave the model unchanged afterwards."""
    import torch

    ids = [NeuronId.parse(n) for n in neurons]
    tokens = encode(model, prompt).tokens
    with torch.inference_mode():
        clean = model(tokens)[0, -1].float().cpu()
        with mask_neurons(model, ids):
            want = model(tokens)[0, -1].float().cpu()
    got, err = _call(fn, model, prompt, [(n.layer, n.index) for n in ids])
    if err is not None:
        return _report(False, f"masked_logits raised {err}.")
    with torch.inference_mode():
        after = model(tokens)[0, -1].float().cpu()
    if not torch.equal(after, clean):
        return _report(False, "the model's logits changed after masked_logits returned: remove your hooks "
                              "(use a context manager such as model.hooks(...)).")
    try:
        got_t = torch.as_tensor(got).detach().float().cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        return _report(False, f"masked_logits returned {type(got).__name__}, not a vector of logits.")
    if got_t.shape != want.shape:
        return _report(False, f"masked_logits returned {tuple(got_t.shape)} values; the last position has "
                              f"{want.numel()} logits.")
    err_max = float((got_t - want).abs().max())
    if err_max > tol:
        same = float((got_t - clean).abs().max()) <= tol
        hint = " (nothing was masked: is the hook on blocks.L.mlp.hook_post?)" if same else ""
        return _report(False, f"masked_logits differs from the reference by {err_max:.3g} (tolerance {tol:g}){hint}.")
    return _report(True, f"masked_logits matches mask_neurons for {', '.join(neurons)} (max |Δ| {err_max:.2g}) "
                         "and leaves the model unchanged.")


# ----------------------------------------------------------------------------- editing (chapter 5)


def check_relative_reduction(fn: Callable[..., float], tol: float = 1e-9) -> CheckResult:
    """``fn(before, after, ideal)`` must return ``1 - |after - ideal| / |before - ideal|``."""
    cases = [(0.8, 0.4, 0.0), (0.8, 1.0, 0.0), (-0.6, 0.3, 0.0), (62.0, 56.0, 50.0), (40.0, 55.0, 50.0)]
    return _compare_cases("relative_reduction", fn, relative_bias_reduction, cases, tol)


def check_predict_joint(fn: Callable[..., Any], tol: float = 1e-12) -> CheckResult:
    """``fn(b0, b_a, b_b)`` must return the additive prediction ``b0 + (b_a - b0) + (b_b - b0)``
    per word (chapter 5's additivity exercise)."""
    cases = [  # (b0, b_a, b_b) -> b_a + b_b - b0, by hand: [1.0+0.5-2.0, -1.0+0.0-(-0.5)] = [-0.5, -0.5]
        (np.array([2.0, -0.5]), np.array([1.0, -1.0]), np.array([0.5, 0.0]), np.array([-0.5, -0.5])),
        (np.array([0.3, 0.3, 0.3]), np.array([0.3, 0.3, 0.3]), np.array([0.1, 0.2, 0.4]), np.array([0.1, 0.2, 0.4])),
    ]
    for b0, a, b, want in cases:
        got, err = _call(fn, b0.copy(), a.copy(), b.copy())
        if err is not None:
            return _report(False, f"predict_joint raised {err}.")
        try:
            got = np.asarray(got, dtype=float)
        except (TypeError, ValueError):
            return _report(False, f"predict_joint returned {got!r}, not an array of numbers.")
        if got.shape != want.shape or not np.allclose(got, want, atol=tol, rtol=0):
            return _report(False, f"predict_joint({b0.tolist()}, {a.tolist()}, {b.tolist()}) returned "
                                  f"{got.tolist()}, expected {want.tolist()} (each neuron's change is b_x - b0).")
    return _report(True, "predict_joint adds the two single changes to the unedited b.")


def check_kv_group(fn: Callable[..., Any]) -> CheckResult:
    """``fn(head, n_heads, n_kv_heads)`` must return the key/value group ``head // (n_heads // n_kv_heads)``."""
    # SmolLM2: 9 heads, 3 groups -> heads 0-2 read group 0, 3-5 group 1, 6-8 group 2
    cases = [(h, 9, 3, h // 3) for h in range(9)] + [(5, 8, 8, 5), (7, 8, 1, 0), (13, 14, 2, 1)]
    for head, n, kv, want in cases:
        got, err = _call(fn, head, n, kv)
        if err is not None:
            return _report(False, f"kv_group({head}, {n}, {kv}) raised {err}.")
        if got != want:
            return _report(False, f"kv_group({head}, {n}, {kv}) returned {got!r}, expected {want} "
                                  f"({n // kv} query heads share each key/value head).")
    return _report(True, f"kv_group maps query heads to their key/value group on {len(cases)} cases.")


# ----------------------------------------------------------------------------- CRISPR (chapter 6)


def check_bbq_bias_scores(fn: Callable[..., tuple[float, float]], tol: float = 1e-9) -> CheckResult:
    """``fn(pred, label, unknown, target, polarity, condition)`` (arrays) must return
    ``(s_DIS, s_AMB)`` of Parrish et al. (2022)."""
    # 6 disambiguated and 6 ambiguous hand-made items (answers 0..2)
    pred = np.array([0, 1, 2, 2, 1, 0, 2, 0, 1, 0, 1, 0])
    label = np.array([0, 1, 0, 2, 1, 0, 2, 2, 2, 2, 2, 2])
    unknown = np.array([2, 2, 1, 1, 0, 1, 2, 2, 2, 2, 2, 2])
    target = np.array([0, 0, 0, 0, 2, 2, 0, 1, 0, 0, 1, 1])
    polarity = np.array(["neg", "nonneg", "neg", "nonneg", "neg", "nonneg"] * 2)
    condition = np.array(["disambig"] * 6 + ["ambig"] * 6)
    ref = bbq_scores(pred, label, unknown, target, polarity, condition)
    want = (ref["s_dis"], ref["s_amb"])
    got, err = _call(fn, pred, label, unknown, target, polarity, condition)
    if err is not None:
        return _report(False, f"bbq_bias_scores raised {err}.")
    try:
        s_dis, s_amb = (float(v) for v in got)
    except (TypeError, ValueError):
        return _report(False, f"bbq_bias_scores returned {got!r}; return the pair (s_DIS, s_AMB).")
    if not math.isclose(s_dis, want[0], abs_tol=tol):
        return _report(False, f"s_DIS is {s_dis:.6g} but the reference gives {want[0]:.6g} "
                              "(2 · biased / non-UNKNOWN answers − 1 on disambiguated items).")
    if not math.isclose(s_amb, want[1], abs_tol=tol):
        hint = " (scale by 1 − ambiguous accuracy)" if math.isclose(
            s_amb * (1 - ref["accuracy_ambig"]), want[1], abs_tol=1e-9) else ""
        return _report(False, f"s_AMB is {s_amb:.6g} but the reference gives {want[1]:.6g}{hint}.")
    return _report(True, f"bbq_bias_scores matches the reference (s_DIS {want[0]:.3g}, s_AMB {want[1]:.3g}).")


def check_crispr_score(fn: Callable[..., Any], tol: float = 1e-9) -> CheckResult:
    """``fn(act, grad_biased, grad_gold, alpha, lam)`` with ``[tokens, units]`` arrays must return
    the per-unit CRISPR score ``alpha·max_t(a·g_b) − lam·max(0, alpha·max_t(a·g_y))``."""
    rng = np.random.default_rng(7)
    T, U = 6, 9
    act, gb, gg = rng.normal(size=(T, U)), rng.normal(size=(T, U)), rng.normal(size=(T, U))
    gg[:, :3] = -np.abs(gg[:, :3]) * np.sign(act[:, :3])  # units whose gold attribution is negative: clamped to 0

    def reference(act, gb, gg, alpha, lam):
        return alpha * (act * gb).max(0) - lam * np.maximum(0.0, alpha * (act * gg).max(0))

    for alpha, lam in ((0.7, 1.0), (0.25, 0.5)):
        got, err = _call(fn, act, gb, gg, alpha, lam)
        if err is not None:
            return _report(False, f"crispr_score raised {err}.")
        want = reference(act, gb, gg, alpha, lam)
        try:
            got_a = np.asarray(got, dtype=float).reshape(-1)
        except (TypeError, ValueError):
            return _report(False, f"crispr_score returned {type(got).__name__}, not one score per unit.")
        if got_a.shape != want.shape:
            return _report(False, f"crispr_score returned {got_a.size} scores; expected one per unit ({U}).")
        if not np.allclose(got_a, want, atol=tol, rtol=0):
            mean_tok = alpha * (act * gb).mean(0) - lam * np.maximum(0.0, alpha * (act * gg).mean(0))
            hint = " (take the maximum over tokens, not the mean)" if np.allclose(got_a, mean_tok) else ""
            return _report(False, f"crispr_score differs from the reference by {np.abs(got_a - want).max():.3g} "
                                  f"for alpha={alpha}, lam={lam}{hint}.")
    return _report(True, "crispr_score matches the reference for two (alpha, lambda) settings.")
