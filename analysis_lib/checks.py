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


@dataclass(frozen=True)
class CheckResult:
    """Outcome of a check: ``passed`` and the one-sentence ``message``."""

    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return self.message


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
    from .metrics import icat

    cases = [(100.0, 50.0), (90.0, 60.0), (80.0, 35.0), (50.0, 100.0), (72.5, 41.0)]
    return _compare_cases("icat", fn, icat, cases, tol)


def check_entropy_difference(fn: Callable[[np.ndarray, np.ndarray], float], tol: float = 1e-9) -> CheckResult:
    """``fn(lp_he, lp_she)`` (arrays) must return 1 − mean binary entropy in bits."""
    from .metrics import winogender_entropy_difference

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
    from .neurons import NeuronId

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
    fn: Callable[..., float], model, *, prompt: str = "The nurse is a", target: str = " woman",
    neuron: str = "ffnL20N100", tol: float = 1e-4,
) -> CheckResult:
    """``fn(model, prompt, target, layer, index)`` must return the FFN neuron's log-probability increase.

    The reference is the study's exact attribution engine: the neuron's subvalue (coefficient
    at the last position × output row) added to the residual before its FFN layer, read out with
    the final norm scale held fixed.
    """
    from .neurons import NeuronId
    from .reference import ffn_log_prob_increase

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
