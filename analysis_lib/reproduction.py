"""What reproduced: every headline claim of the two papers beside this study's results.

The final chapter runs no model. It reads the machine-readable results that chapters 0–6
wrote (``results/<chapter>.json`` and their ``results/<chapter>__<table>.parquet`` tables) and
puts each headline claim of paper 1 (Yu & Ananiadou 2025) and paper 2 (CRISPR, Yang et al.
2024) beside our value, with a verdict and a one-line reason.

The papers' values are copied from the summaries in ``shared/papers`` (``yu2025_summary.md``,
``method_spec.md`` §5, ``yang2024_crispr_abstract.txt``), never invented: where a summary gives
no number the table says "not reported".

Verdicts are one of :data:`VERDICTS`. Where a chapter already stored a verdict (``verdict_*``,
``edit_verdict``, ``*_verdict``) it is used as is; otherwise the rule is stated in the row's
reason and implemented by the small functions :func:`interval_verdict`,
:func:`change_verdict`, :func:`level_verdict` and :func:`capability_verdict`. A chapter that
has not run, or ran in a profile without the part a claim needs (a missing key or table),
gives the verdict "not tested" and the value :data:`NOT_TESTED` instead of an error.

Example::

    from analysis_lib import reproduction
    table = reproduction.compare()            # reads results_dir()
    reproduction.verdict_counts(table)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from .metrics import lead_over_chance_phrase
from .plots import label
from .results import results_dir

__all__ = [
    "VERDICTS",
    "NOT_TESTED",
    "CHAPTERS",
    "Interval",
    "Missing",
    "ResultsDir",
    "Claim",
    "Outcome",
    "CLAIMS",
    "compare",
    "chapter_status",
    "profile_summary",
    "verdict_counts",
    "verdict_list",
    "style",
    "plot_verdicts",
    "interval_verdict",
    "change_verdict",
    "level_verdict",
    "capability_verdict",
    "check_interval_verdict",
    "check_change_verdict",
]

#: the four verdicts, in the order of the figure and the counts
VERDICTS = ("reproduced", "partly", "not reproduced", "not tested")
#: the value shown when a claim's input is missing from the results directory
NOT_TESTED = "not tested in this run"

#: the chapters whose results this module reads, by short name
CHAPTERS = {
    "00": "00_model_and_start_token",
    "01": "01_commonwords",
    "02": "02_measuring_bias",
    "03": "03_tracing_gender_circuits",
    "04": "04_general_neurons",
    "05": "05_editing_bias",
    "06": "06_crispr",
}
C0, C1, C2, C3, C4, C5, C6 = CHAPTERS.values()

PAPER1 = "Yu & Ananiadou 2025"
PAPER2 = "Yang et al. 2024 (CRISPR)"
BASELINE = "baseline (both papers)"
HEAD2HEAD = "head to head (both papers)"

# ----------------------------------------------------------------------------- the papers' numbers
# Paper 1: yu2025_summary.md and method_spec.md §5.1 (all from the summary of the paper).
P1_ARITH = (51.9, 7.5)  # % before -> after masking the two general neurons (Llama)
P1_RACE = (63.5, 31.5)
P1_ICAT = (59.1, 61.6)  # comparator -> edit (StereoSet)
P1_ENTROPY = (0.95, 0.81)  # comparator -> edit (WinoGender entropy difference, lower is better)
P1_SHARED_K10 = 0.60  # "Selecting fewer neurons (K=10) yields higher shared frequency (60%)"
RACE_CHANCE = 25.0

# Paper 2: method_spec.md §5.4 (Table 1, transcribed by a secondary summary): mean BBQ accuracy
# (%) over 10 instructions, original -> CRISPR.
P2_TABLE1_BBQ = {
    ("Flan-T5-base", "SES"): (65.63, 71.68),
    ("Flan-T5-base", "Age"): (43.60, 60.32),
    ("Flan-T5-base", "Disability"): (43.44, 62.88),
    ("Flan-T5-large", "SES"): (66.67, 85.11),
    ("Flan-T5-large", "Age"): (53.62, 73.60),
    ("Flan-T5-large", "Disability"): (53.26, 76.13),
    ("Flan-T5-xl", "SES"): (82.92, 93.10),
    ("Flan-T5-xl", "Age"): (77.03, 88.54),
    ("Flan-T5-xl", "Disability"): (67.54, 87.85),
    ("T0", "SES"): (45.01, 67.03),
    ("T0", "Age"): (42.98, 55.88),
    ("T0", "Disability"): (40.13, 54.04),
}
P2_GAINS = [after - before for before, after in P2_TABLE1_BBQ.values()]
P2_ORIGINALS = [before for before, _ in P2_TABLE1_BBQ.values()]
P2_TABLE5_SES = {"full": 71.68, "mean_tokens": 71.32, "no_confidence": 70.92, "no_skill": 70.28, "random": 65.62}
P2_MAX_PRUNED = 170  # Table 3: 3 to 170 pruned neurons

# ----------------------------------------------------------------------------- thresholds of the rules
SHARED_TOL = 0.10  # shared frequency: 60 % ± 10 points counts as the paper's value
LEAN_FULL, LEAN_PARTIAL = 0.75, 0.60  # CommonWords category: share of words leaning one way
ACC_TOL_PP, PPL_TOL_PCT = 2.0, 2.0  # capability kept: accuracy within 2 points, perplexity +2 %
ACC_PARTIAL_PP, PPL_PARTIAL_PCT = 10.0, 10.0  # a cost, but no collapse


# ----------------------------------------------------------------------------- reading results/


class Missing(LookupError):
    """A claim's input is not in the results directory (chapter not run, or key/table absent)."""

    def __init__(self, chapter: str, key: str | None = None, what: str = "recorded no", *, message: str | None = None):
        self.chapter, self.key = chapter, key
        if message is not None:
            msg = message
        elif key is None:
            msg = f"chapter {chapter} has no results in this directory (not run)"
        else:
            msg = f"{chapter} {what} {key!r} (not run, or run in a profile without this part)"
        super().__init__(msg)


@dataclass(frozen=True)
class Interval:
    """A point estimate with an optional 95 % interval (``low``/``high`` are ``None`` without one)."""

    estimate: float
    low: float | None = None
    high: float | None = None

    @property
    def has_ci(self) -> bool:
        return self.low is not None and self.high is not None

    def scaled(self, factor: float) -> "Interval":
        s = lambda x: None if x is None else x * factor  # noqa: E731
        return Interval(self.estimate * factor, s(self.low), s(self.high))

    def text(self, fmt: str = ".2f", suffix: str = "") -> str:
        """``"0.59 [0.54, 0.64]"`` (``suffix`` after the estimate, e.g. ``" %"``)."""
        out = f"{format(self.estimate, fmt)}{suffix}"
        if self.has_ci:
            out += f" [{format(self.low, fmt)}, {format(self.high, fmt)}]"
        return out


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _numbers(text: str) -> list[float]:
    return [float(x) for x in _NUMBER.findall(str(text).replace("\u2212", "-"))]


class ResultsDir:
    """Read access to one results directory (``results_dir()`` by default).

    Chapters' JSON files are read once. Every accessor raises :class:`Missing` when the chapter,
    the key or the table is absent, which :func:`compare` turns into "not tested".
    """

    def __init__(self, directory: str | Path | None = None):
        self.path = Path(directory) if directory is not None else results_dir()
        self._payloads: dict[str, dict | None] = {}

    def payload(self, chapter: str) -> dict | None:
        """The whole JSON of a chapter (``chapter``, ``parameters``, ``results``), or ``None``."""
        if chapter not in self._payloads:
            path = self.path / f"{chapter}.json"
            self._payloads[chapter] = json.loads(path.read_text()) if path.is_file() else None
        return self._payloads[chapter]

    def has(self, chapter: str) -> bool:
        return self.payload(chapter) is not None

    def values(self, chapter: str) -> dict[str, Any]:
        p = self.payload(chapter)
        if p is None:
            raise Missing(chapter)
        return p.get("results", {})

    def params(self, chapter: str) -> dict[str, Any]:
        p = self.payload(chapter)
        return {} if p is None else p.get("parameters", {})

    def get(self, chapter: str, key: str) -> Any:
        values = self.values(chapter)
        if key not in values:
            raise Missing(chapter, key)
        return values[key]

    def num(self, chapter: str, key: str) -> float:
        """A number (a numeric string such as ``"+5.36"`` is parsed; ``null``/NaN is missing)."""
        v = self.get(chapter, key)
        if isinstance(v, dict) and "estimate" in v:
            v = v["estimate"]
        if isinstance(v, str):
            nums = _numbers(v)
            v = nums[0] if nums else None
        if v is None or isinstance(v, bool) or not math.isfinite(float(v)):
            raise Missing(chapter, key, "recorded an empty value for")
        return float(v)

    def interval(self, chapter: str, key: str) -> Interval:
        """A value with its 95 % interval where the chapter recorded one.

        Three formats occur: a stored CI object ``{"estimate", "low", "high", "n"}`` (what
        :meth:`Results.add` writes for a bootstrap result); a number with a sibling
        ``<key>_ci`` holding such a dict or the text ``"[low, high]"``; a bare number.
        """
        v = self.get(chapter, key)
        if isinstance(v, dict) and "estimate" in v:
            if v.get("estimate") is None:
                raise Missing(chapter, key, "recorded an empty value for")
            lo, hi = v.get("low"), v.get("high")
            return Interval(float(v["estimate"]), None if lo is None else float(lo), None if hi is None else float(hi))
        est = self.num(chapter, key)
        ci = self.values(chapter).get(f"{key}_ci")
        if isinstance(ci, dict) and ci.get("low") is not None and ci.get("high") is not None:
            return Interval(est, float(ci["low"]), float(ci["high"]))
        if isinstance(ci, str) and len(_numbers(ci)) == 2:
            lo, hi = _numbers(ci)
            return Interval(est, lo, hi)
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
            return Interval(est, float(ci[0]), float(ci[1]))
        return Interval(est)

    def table(self, chapter: str, name: str) -> pd.DataFrame:
        """``results/<chapter>__<name>.parquet`` (the chapter must have run)."""
        self.values(chapter)
        path = self.path / f"{chapter}__{name}.parquet"
        if not path.is_file():
            raise Missing(chapter, f"{name}.parquet", "wrote no table")
        return pd.read_parquet(path)

    def model(self, chapter: str) -> str:
        return str(self.params(chapter).get("model") or "–")

    def profile(self, chapter: str) -> str:
        return str(self.params(chapter).get("profile") or "–")


# ----------------------------------------------------------------------------- verdict rules


def interval_verdict(low: float, high: float, target: float, tol: float) -> str:
    """Does our interval agree with the paper's value ``target`` up to ``tol``?

    * ``"reproduced"``: the interval ``[low, high]`` overlaps ``[target - tol, target + tol]``;
    * ``"partly"``: it misses that band but comes within ``2 * tol`` of ``target``;
    * ``"not reproduced"``: it lies further away.
    """
    if low > high:
        low, high = high, low
    distance = max(low - target, target - high, 0.0)
    if distance <= tol:
        return "reproduced"
    if distance <= 2 * tol:
        return "partly"
    return "not reproduced"


def change_verdict(estimate: float, low: float, high: float, paper_change: float) -> str:
    """Verdict on a paired change (after − before) against the paper's change.

    * ``"reproduced"``: the interval excludes zero on the paper's side and the estimate is at
      least as large (in absolute value) as ``paper_change``;
    * ``"partly"``: the interval excludes zero on the paper's side, the estimate is smaller;
    * ``"not reproduced"``: the interval includes zero (no detectable change) or lies on the
      other side.
    """
    sign = 1.0 if paper_change >= 0 else -1.0
    lo, hi = sorted((sign * low, sign * high))
    if lo <= 0:
        return "not reproduced"
    return "reproduced" if sign * estimate >= abs(paper_change) else "partly"


def level_verdict(effect: float, full: float, partial: float) -> str:
    """``"reproduced"`` when ``effect >= full``, ``"partly"`` when ``>= partial``, else
    ``"not reproduced"`` (effects oriented so that larger is closer to the paper)."""
    if effect >= full:
        return "reproduced"
    if effect >= partial:
        return "partly"
    return "not reproduced"


def capability_verdict(worst_acc_change_pp: float | None, ppl_change_pct: float | None) -> str:
    """Is capability kept? ``"reproduced"`` when no task accuracy falls by more than
    :data:`ACC_TOL_PP` points and perplexity rises by at most :data:`PPL_TOL_PCT` %;
    ``"partly"`` within :data:`ACC_PARTIAL_PP` points and :data:`PPL_PARTIAL_PCT` %; else
    ``"not reproduced"``. ``None`` skips that part."""
    acc = 0.0 if worst_acc_change_pp is None else -worst_acc_change_pp
    ppl = 0.0 if ppl_change_pct is None else ppl_change_pct
    if acc <= ACC_TOL_PP and ppl <= PPL_TOL_PCT:
        return "reproduced"
    if acc <= ACC_PARTIAL_PP and ppl <= PPL_PARTIAL_PCT:
        return "partly"
    return "not reproduced"


def _chapter_verdict(text: str) -> str:
    """A chapter's own verdict string in this table's vocabulary."""
    t = str(text).strip().lower()
    if t.startswith("not tested"):
        return "not tested"
    if t.startswith("not reproduced"):
        return "not reproduced"
    if t.startswith("partly"):
        return "partly"
    if t.startswith("reproduced"):
        return "reproduced"
    raise ValueError(f"unknown verdict {text!r}")


def _side(low: float, high: float, ideal: float) -> str:
    """``"above"``, ``"below"`` or ``"compatible with"`` (same rule as ``benchmarks.verdict``)."""
    if low > ideal:
        return "above"
    if high < ideal:
        return "below"
    return "compatible with"


def _worst(verdicts: Iterable[str]) -> str:
    order = {"not reproduced": 0, "partly": 1, "reproduced": 2}
    return min(verdicts, key=lambda v: order[v])


def _pct(x: float, digits: int = 0) -> str:
    return f"{100 * x:.{digits}f} %"


# ----------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class Outcome:
    """What a claim's evaluation found: our value, the verdict and a one-line reason."""

    our_value: str
    verdict: str
    reason: str
    model: str | None = None  # set for rows that are about another model than the chapter's
    claim: str | None = None  # set to override the claim text (per-model rows)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is not one of {VERDICTS}")


@dataclass(frozen=True)
class Claim:
    """One headline claim: where it comes from, the paper's value and how we test it."""

    id: str
    paper: str
    chapter: str
    claim: str
    paper_value: str
    evaluate: Callable[[ResultsDir], "Outcome | list[Outcome]"]


def _not_tested_by_design(reason: str) -> Callable[[ResultsDir], Outcome]:
    return lambda v: Outcome("not tested (by design)", "not tested", reason)


# --- chapters 0-2: the running example, CommonWords, the benchmarks


def _nurse(v: ResultsDir) -> list[Outcome]:
    rows = [_nurse_row(v.num(C0, "p_female_noun_nurse"), None)]
    try:
        probe = v.table(C0, "probe")
    except Missing:
        return rows
    nurse = probe[(probe.word == "nurse") & (probe.kind == "noun")]
    for name in sorted(set(nurse.model) - {v.model(C0)}):
        rows.append(_nurse_row(float(nurse[nurse.model == name].p_female.iloc[0]), name))
    return rows


def _nurse_row(p: float, model: str | None) -> Outcome:
    verdict = "reproduced" if p >= 2 / 3 else ("partly" if p > 0.5 else "not reproduced")
    return Outcome(f"P(woman | man or woman) = {p:.2f} after \"The nurse is a\"", verdict,
                   "reproduced when \" woman\" is at least twice as likely as \" man\", partly when it is likelier",
                   model=model)


def _cw_dataset(v: ResultsDir) -> Outcome:
    n, k = int(v.num(C1, "n_words")), int(v.num(C1, "n_categories"))
    our = f"{n} words in {k} categories ({int(v.num(C1, 'n_train'))} train / {int(v.num(C1, 'n_test'))} test)"
    verdict = "reproduced" if (n, k) == (500, 5) else "partly"
    return Outcome(our, verdict, "rebuilt to the paper's design; the paper's word lists are unpublished, so the "
                                 "words are our own")


# Chapter 2 stores the default model's numbers as JSON keys (with its own interval verdicts) and
# every compared model's numbers in its suite table: the same claim is judged for each model.
SUITE_KEYS = {
    "cw_noun_mean_b": ("commonwords", "noun", "mean_b"),
    "cw_noun_share_strong": ("commonwords", "noun", "share_strong"),
    "ss_intra_ss": ("stereoset", "intrasentence", "ss"),
    "ss_intra_icat": ("stereoset", "intrasentence", "icat"),
    "wg_ed": ("winogender", "all", "entropy_difference"),
    "wg_q_male": ("winogender", "all", "mean_q_male"),
    "bbq_accuracy": ("bbq", "Gender_identity", "accuracy"),
    "bbq_s_dis": ("bbq", "Gender_identity", "s_dis"),
    "bbq_s_amb": ("bbq", "Gender_identity", "s_amb"),
    "wb_gap": ("winobias", "test", "gap"),
}
#: the ideal value each chapter-2 verdict compares its interval with
IDEALS = {"cw_noun_mean_b": 0.0, "ss_intra_ss": 50.0, "wg_q_male": 0.5, "bbq_accuracy": 1 / 3, "bbq_s_dis": 0.0,
          "bbq_s_amb": 0.0, "wb_gap": 0.0}


class _Bench:
    """One model's chapter-2 numbers: the JSON keys for the default model, the suite table otherwise."""

    def __init__(self, v: ResultsDir, model: str | None = None, suite: pd.DataFrame | None = None):
        self.v, self.model, self.suite = v, model, suite

    def interval(self, key: str) -> Interval:
        if self.model is None:
            return self.v.interval(C2, key)
        b, variant, metric = SUITE_KEYS[key]
        s = self.suite
        r = s[(s.model == self.model) & (s.benchmark == b) & (s.variant == variant) & (s.metric == metric)]
        if r.empty:
            raise Missing(C2, f"suite row {b}/{variant}/{metric} for {self.model}", "wrote no")
        return Interval(float(r.estimate.iloc[0]), float(r.low.iloc[0]), float(r.high.iloc[0]))

    def side(self, key: str) -> str:
        """Chapter 2's verdict text ("above 0", "compatible with 50", ...) for ``key``."""
        if self.model is None:
            return str(self.v.get(C2, f"{key}_verdict"))
        iv = self.interval(key)
        return f"{_side(iv.low, iv.high, IDEALS[key])} {IDEALS[key]:.2g}"


def _per_model(judge: Callable[[_Bench], Outcome]) -> Callable[[ResultsDir], list[Outcome]]:
    """The claim for chapter 2's default model, then for every other model of its suite table."""
    def evaluate(v: ResultsDir) -> list[Outcome]:
        rows = [judge(_Bench(v))]
        try:
            suite = v.table(C2, "suite")
        except Missing:
            return rows
        for name in sorted(set(suite.model) - {v.model(C2)}):
            try:
                o = judge(_Bench(v, name, suite))
            except Missing:
                continue
            rows.append(Outcome(o.our_value, o.verdict, o.reason, model=name))
        return rows
    return evaluate


def _cw_lean(m: _Bench) -> Outcome:
    mean_b, share, side = m.interval("cw_noun_mean_b"), m.interval("cw_noun_share_strong"), m.side("cw_noun_mean_b")
    verdict = "not reproduced" if side.startswith("compatible") else "reproduced"
    return Outcome(f"mean b = {mean_b.text('+.2f')}; strongly gendered words {share.scaled(100).text('.0f', ' %')}",
                   verdict, f"mean b (log p(man) − log p(woman), noun template) is {side}")


def _cw_category(category: str) -> Callable[[ResultsDir], Outcome]:
    def evaluate(v: ResultsDir) -> Outcome:
        t = v.table(C2, "categories")
        rows = t[(t.model == v.model(C2)) & (t.kind == "noun") & (t.category == category)]
        if rows.empty:
            raise Missing(C2, f"categories.parquet row for {category}", "wrote no")
        r = rows.iloc[0]
        male = float(r.share_male)
        lean, gender = max(male, 1 - male), ("male" if male >= 0.5 else "female")
        strong = Interval(float(r.share_strong), float(r.share_strong_low), float(r.share_strong_high)).scaled(100)
        our = f"{_pct(lean)} of words lean {gender}; strongly gendered {strong.text('.0f', ' %')}; mean b {r.mean_b:+.2f}"
        verdict = level_verdict(lean, LEAN_FULL, LEAN_PARTIAL)
        return Outcome(our, verdict, f"{_pct(lean)} of the {int(r.n)} words lean the same way (reproduced from "
                                     f"{_pct(LEAN_FULL)}, partly from {_pct(LEAN_PARTIAL)}; noun template)")
    return evaluate


def _stereoset(m: _Bench) -> Outcome:
    ss, icat, side = m.interval("ss_intra_ss"), m.interval("ss_intra_icat"), m.side("ss_intra_ss")
    verdict = "reproduced" if side.startswith("above") else "not reproduced"
    return Outcome(f"SS {ss.text('.1f')}; ICAT {icat.text('.1f')}", verdict,
                   f"the SS interval is {side} (intrasentence gender items)")


def _winogender(m: _Bench) -> Outcome:
    ed, q, side = m.interval("wg_ed"), m.interval("wg_q_male"), m.side("wg_q_male")
    verdict = "not reproduced" if side.startswith("compatible") else "reproduced"
    return Outcome(f"entropy difference {ed.text('.3f')}; mean P(male form) {q.text('.2f')}", verdict,
                   f"mean P(male form) is {side}; the paper's entropy formula is unknown, so the values are "
                   "not on one scale")


def _bbq_accuracy(m: _Bench) -> Outcome:
    acc, side = m.interval("bbq_accuracy"), m.side("bbq_accuracy")
    verdict = "reproduced" if side.startswith("above") else "not reproduced"
    return Outcome(f"accuracy {acc.scaled(100).text('.1f', ' %')} (gender identity)", verdict,
                   f"accuracy is {side} (chance); CRISPR's gains presuppose a model that reads the context")


def _bbq_bias(m: _Bench) -> Outcome:
    s_dis, s_amb = m.interval("bbq_s_dis"), m.interval("bbq_s_amb")
    sides = m.side("bbq_s_dis"), m.side("bbq_s_amb")
    verdict = "reproduced" if any(s.startswith("above") for s in sides) else "not reproduced"
    return Outcome(f"s_DIS {s_dis.text('+.2f')}; s_AMB {s_amb.text('+.2f')}", verdict,
                   f"s_DIS is {sides[0]}, s_AMB is {sides[1]} (above 0 = stereotyped answers)")


def _winobias(m: _Bench) -> Outcome:
    gap, side = m.interval("wb_gap"), m.side("wb_gap")
    verdict = "reproduced" if side.startswith("above") else "not reproduced"
    return Outcome(f"pro − anti accuracy gap {gap.text('+.1f')} points", verdict, f"the gap is {side}")


# --- chapter 3: circuits

KIND_NAMES = {"ffn_value": "FFN value", "attn_value": "attention value", "ffn_query": "FFN query"}


def _route(v: ResultsDir) -> Outcome:
    q, a, val = (v.num(C3, f"median_layer_{k}") for k in ("ffn_query", "attn_value", "ffn_value"))
    n = int(v.num(C3, "n_layers_model"))
    our = f"median layer of the top-50: query {q:.0f}, attention {a:.0f}, value {val:.0f} (of {n})"
    if q < a < val:
        return Outcome(our, "reproduced", "query neurons sit shallowest, value neurons deepest, attention between")
    if val > max(q, a):
        return Outcome(our, "partly", "value neurons sit deepest, but query and attention neurons are not ordered")
    return Outcome(our, "not reproduced", "value neurons are not the deepest kind")


def _shared(kind: str) -> Callable[[ResultsDir], Outcome]:
    def evaluate(v: ResultsDir) -> Outcome:
        iv = v.interval(C3, f"shared_mean_{kind}_K10")
        verdict = interval_verdict(iv.low if iv.has_ci else iv.estimate, iv.high if iv.has_ci else iv.estimate,
                                   P1_SHARED_K10, SHARED_TOL)
        return Outcome(iv.scaled(100).text(".0f", " %"), verdict,
                       f"mean frequency of the 10 most shared {KIND_NAMES[kind]} neurons vs the paper's 60 % "
                       f"± {_pct(SHARED_TOL)} (the paper's exact definition is unknown)")
    return evaluate


def _shared_vs_k(v: ResultsDir) -> Outcome:
    values = v.values(C3)
    parts, lower = [], []
    for kind in KIND_NAMES:
        ks = sorted(int(m.group(1)) for key in values if (m := re.fullmatch(rf"shared_mean_{kind}_K(\d+)", key)))
        if 10 not in ks or max(ks) <= 10:
            raise Missing(C3, f"shared_mean_{kind}_K<larger than 10>")
        k10, kmax = v.num(C3, f"shared_mean_{kind}_K10"), v.num(C3, f"shared_mean_{kind}_K{max(ks)}")
        parts.append(f"{KIND_NAMES[kind]} {_pct(k10)} → {_pct(kmax)} (K = {max(ks)})")
        lower.append(kmax < k10)
    verdict = "reproduced" if all(lower) else ("partly" if any(lower) else "not reproduced")
    return Outcome("; ".join(parts), verdict, f"shared frequency falls with K for {sum(lower)} of 3 neuron kinds")


def _start_share(v: ResultsDir) -> Outcome:
    s = v.interval(C3, "share_start_ffn_query")
    n = int(v.num(C3, "n_start_dominated_ffn_query"))
    our = f"{s.scaled(100).text('.0f', ' %')} of the top-50 query score at the start token; {n} start-dominated"
    low = s.low if s.has_ci else s.estimate
    verdict = "reproduced" if low > 0.5 else ("partly" if s.estimate > 0.25 else "not reproduced")
    return Outcome(our, verdict, "reproduced when most of the query score (interval above 50 %) passes through the "
                                 "start token")


def _word_route(v: ResultsDir) -> Outcome:
    wq, wa, sq = (v.interval(C3, k) for k in ("share_word_ffn_query", "share_word_attn_value", "share_start_ffn_query"))
    our = f"word share: query {wq.scaled(100).text('.0f', ' %')}, attention {wa.scaled(100).text('.0f', ' %')}"
    pos = lambda iv: (iv.low if iv.has_ci else iv.estimate) > 0  # noqa: E731
    if wq.estimate > sq.estimate and pos(wq):
        return Outcome(our, "reproduced", "the word carries more of the query score than the start token")
    if pos(wq) or pos(wa):
        return Outcome(our, "partly", "a word route exists (interval above 0) but the start token and the template "
                                      "carry more")
    return Outcome(our, "not reproduced", "the word's share is compatible with 0")


def _gender_exist(v: ResultsDir) -> Outcome:
    n = int(v.num(C3, "n_static_gendered"))
    our = f"{n} neurons with the pattern in the weights (strongest {v.get(C3, 'static_best_id')})"
    return Outcome(our, "reproduced" if n >= 1 else "not reproduced",
                   "projections of FFN value vectors onto the vocabulary with female tokens at one end and male at "
                   "the other")


def _gender_top(v: ResultsDir) -> Outcome:
    g, r = v.interval(C3, "share_gendered_ffn_value"), v.interval(C3, "share_gendered_random_ffn")
    r_high = r.high if r.has_ci else r.estimate
    our = f"gendered among the top-50 FFN value neurons {g.scaled(100).text('.0f', ' %')}; random {_pct(r.estimate, 1)}"
    low = g.low if g.has_ci else g.estimate
    if low > r_high:
        return Outcome(our, "reproduced", "gender neurons are more common among the top neurons than among random "
                                          "ones (intervals apart)")
    return Outcome(our, "not reproduced", "the share among the top neurons is compatible with random neurons' share")


# --- chapter 4: general neurons


def _ch4(key: str, ours: Callable[[ResultsDir], tuple[str, str]]) -> Callable[[ResultsDir], Outcome]:
    def evaluate(v: ResultsDir) -> Outcome:
        verdict = _chapter_verdict(v.get(C4, key))
        if verdict == "not tested":
            return Outcome(NOT_TESTED, "not tested", f"chapter 4 reports this part as not tested in its "
                                                     f"{v.profile(C4)} profile ({key})")
        our, reason = ours(v)
        return Outcome(our, verdict, f"chapter 4's {key}: {reason}")
    return evaluate


def _g_exist(v: ResultsDir) -> tuple[str, str]:
    ids = ", ".join(v.get(C4, "general_ids"))
    return (f"{ids}; {_pct(v.num(C4, 'general_1_share_start'))} of the first one's query score at the start token",
            f"found by a scan of unrelated prompts; coefficient {v.num(C4, 'general_1_m_start'):.0f} at the start")


def _g_layer(v: ResultsDir) -> tuple[str, str]:
    layer, n = int(v.num(C4, "general_1_layer")), int(v.num(C4, "n_layers"))
    our = f"layer {layer} of {n} ({_pct(v.num(C4, 'general_1_depth'))} of the depth)"
    values = v.values(C4)
    if "sink_layers" not in values:
        return our, "shallow means layer ≤ max(2, layers / 8)"
    sinks = [f"{values.get(f'sink_{k}_layers')} ({', '.join(values.get(f'sink_{k}_writers') or [])})"
             for k in range(1, len(values["sink_layers"]) + 1)]
    our += "; start-token sinks at " + "; ".join(sinks)
    return our, ("shallow means layer ≤ max(2, layers / 8); judged on the sinks: a shallow sink exists "
                 + ("and holds the query score's general neurons" if values.get("verdict_shallow_sink") == "reproduced"
                    else "but the query score's general neurons sit in a deeper one"
                    if values.get("verdict_shallow_sink") == "partly reproduced" else "nowhere"))


def _g_layer_row(v: ResultsDir) -> Outcome:
    """The layer claim, judged on the sinks when chapter 4 recorded them (both sinks named)."""
    key = "verdict_shallow_sink" if "verdict_shallow_sink" in v.values(C4) else "verdict_layer"
    return _ch4(key, _g_layer)(v)


def _g_collapse(v: ResultsDir) -> tuple[str, str]:
    def task(name: str, label: str) -> str:
        before, after = v.interval(C4, f"original_{name}"), v.interval(C4, f"general_{name}")
        return f"{label} {before.text('.1f', ' %')} → {after.text('.1f', ' %')}"
    paper_arith = (P1_ARITH[0] - P1_ARITH[1]) / P1_ARITH[0]
    paper_race = (P1_RACE[0] - P1_RACE[1]) / (P1_RACE[0] - RACE_CHANCE)
    race = lead_over_chance_phrase(v.num(C4, "race_drop_share_above_chance"))
    reason = (f"arithmetic: {_pct(v.num(C4, 'arith_relative_drop'))} of its accuracy lost; RACE: {race} (paper "
              f"{_pct(paper_arith)} and {_pct(paper_race)}); random same-layer pairs: "
              f"arithmetic {v.get(C4, 'random_range_arithmetic_1digit')} %, RACE {v.get(C4, 'random_range_race')} %")
    return f"{task('arithmetic_1digit', 'arithmetic')}; {task('race', 'RACE')}", reason


def _g_mechanism(v: ResultsDir) -> tuple[str, str]:
    return (f"{_pct(v.num(C4, 'cna_flip_share'))} of the top {int(v.num(C4, 'cna_n_top'))} arithmetic neurons flip sign "
            f"(random pairs {_pct(v.num(C4, 'cna_flip_share_random'))})",
            f"the top neurons keep {_pct(v.num(C4, 'cna_imp_kept'))} of their importance")


def _g_start(v: ResultsDir) -> tuple[str, str]:
    values = v.values(C4)
    keys = sorted(k[len("start_"):-len("_same")] for k in values if k.startswith("start_") and k.endswith("_same"))
    if not keys:
        raise Missing(C4, "start_*_same")
    parts = [f"{'<|endoftext|>' if k == 'eot' else k}: top {v.get(C4, f'start_{k}_top')}" for k in keys]
    return "; ".join(parts), f"default start token {v.get(C4, 'start_token')}: top {', '.join(v.get(C4, 'general_ids'))}"


def _g_replicate(v: ResultsDir) -> tuple[str, str]:
    return (f"{v.get(C4, 'replicate_model')}: general neurons {v.get(C4, 'replicate_general')} (layers "
            f"{v.get(C4, 'replicate_general_layers')}); arithmetic {_pct(v.num(C4, 'replicate_arith_drop'))} lost",
            "same scan and masking on a second architecture")


# --- chapter 5: the editing method


def _one_shot_line(v: ResultsDir) -> str:
    """Why the one-shot reading fails, in one line (empty when chapter 5 did not record it)."""
    vals = v.values(C5)
    if "one_shot_d" not in vals:
        return ""
    m0, m1 = float(vals.get("orig_mean_b", 0.0)), float(vals.get("one_shot_mean_b", 0.0))
    why = (": single pushes towards 'woman' add up past zero" if m0 and m1 * m0 < 0 and abs(m1) > abs(m0) else "")
    return (f"; read one neuron at a time ({vals.get('one_shot_name')}) the edit changes mean |b| by "
            f"{float(vals['one_shot_d']):+.3f} with mean b {m1:+.3f}" + why)


def _edit_reduces(v: ResultsDir) -> Outcome:
    name = str(v.values(C5).get("edit_name", "edit"))
    if name == "no edit":
        return Outcome("the validation rule chose no edit", "not reproduced",
                       "no strategy lowers mean |b| on the validation words" + _one_shot_line(v))
    d = v.interval(C5, "edit_d")
    reduces = str(v.get(C5, "edit_verdict")).strip() == "reduces"
    beyond = v.values(C5).get("edit_beyond_random", True) is True
    our = (f"{name}: mean |b| {v.num(C5, 'orig_mean_abs_b'):.3f} → {v.num(C5, 'edit_mean_abs_b'):.3f}; change "
           f"{d.text('+.3f')} ({v.get(C5, 'edit_rel')} %)")
    verdict = "reproduced" if reduces and beyond else ("partly" if reduces else "not reproduced")
    why = (f"chapter 5's validation-chosen edit {v.get(C5, 'edit_verdict')} held-out bias; matched random draws "
           f"{v.get(C5, 'random_d')}" + ("" if beyond else f" (it beats {v.values(C5).get('edit_random_beaten', 'not all')})")
           + _one_shot_line(v))
    return Outcome(our, verdict, why)


def _edit_capability(v: ResultsDir) -> Outcome:
    ppl = v.interval(C5, "edit_dppl")
    changes = v.values(C5).get("cap_changes_pp") or {}
    worst = min(changes.values()) if changes else None
    our = f"neutral-text perplexity {ppl.text('+.2f', ' %')}"
    if changes:
        our += "; accuracy " + ", ".join(f"{t} {d:+.1f} points" for t, d in changes.items())
    rule = (f"kept when no task accuracy falls by more than {ACC_TOL_PP:g} points and perplexity rises ≤ "
            f"{PPL_TOL_PCT:g} %, partly within {ACC_PARTIAL_PP:g} points and {PPL_PARTIAL_PCT:g} %")
    if not changes:
        rule += " (the task accuracies did not run in this profile: perplexity only)"
    elif worst is not None and -worst > ACC_TOL_PP and ppl.estimate <= PPL_TOL_PCT:
        rule += "; neutral-text perplexity does not see the loss"
    return Outcome(our, capability_verdict(worst, ppl.estimate), rule)


def _relative_gain(v: ResultsDir, before_key: str, after_key: str, paper: tuple[float, float],
                   fmt: str) -> Outcome:
    before, after = v.num(C5, before_key), v.num(C5, after_key)
    lower_better = paper[1] < paper[0]
    gain = (before - after) / before if lower_better else (after - before) / before
    paper_gain = (paper[0] - paper[1]) / paper[0] if lower_better else (paper[1] - paper[0]) / paper[0]
    verdict = "reproduced" if gain >= paper_gain / 2 else ("partly" if gain > 0 else "not reproduced")
    return Outcome(f"{before:{fmt}} → {after:{fmt}} ({gain:+.1%} improvement)", verdict,
                   f"no interval recorded; reproduced from half the paper's relative improvement ({paper_gain:.1%}); "
                   "different models and word lists, so only the direction is comparable")


def _finetune_d(v: ResultsDir) -> float | None:
    """Chapter 5's fine-tuning baseline (condition "fine-tuned (LoRA)"), when its table has one."""
    try:
        t = v.table(C5, "evaluation")
    except Missing:
        return None
    rows = t[t.condition.astype(str).str.startswith("fine-tuned")]
    return float(rows.d_mean_abs_b.iloc[0]) if len(rows) and "d_mean_abs_b" in rows else None


def _edit_baselines(v: ResultsDir) -> Outcome:
    if str(v.values(C5).get("edit_name", "edit")) == "no edit":
        return Outcome("the validation rule chose no edit", "not reproduced",
                       "no edit to compare with the baselines" + _one_shot_line(v))
    d = v.num(C5, "edit_d")
    reduces = str(v.get(C5, "edit_verdict")).strip() == "reduces"
    baselines = {"logit-only": v.num(C5, "logit_d"), "every random draw": min(_numbers(v.get(C5, "random_d")))}
    our = f"change in mean |b|: edit {d:+.3f}, logit-only {baselines['logit-only']:+.3f}, random {v.get(C5, 'random_d')}"
    ft = _finetune_d(v)
    if ft is not None:
        baselines["fine-tuning (LoRA)"] = ft
        our += f", fine-tuned (LoRA) {ft:+.3f}"
    beaten = [name for name, b in baselines.items() if d < b]
    missing = "" if ft is not None else "; no fine-tuning baseline in these results"
    if reduces and len(beaten) == len(baselines):
        return Outcome(our, "reproduced", f"the edit leaves less bias than {', '.join(beaten)}{missing}")
    if beaten:
        return Outcome(our, "partly", f"the edit leaves less bias than {', '.join(beaten)}, not than "
                                      f"{', '.join(b for b in baselines if b not in beaten)}{missing}")
    return Outcome(our, "not reproduced", f"every baseline does at least as well{missing}")


def _start_filter(v: ResultsDir) -> Outcome:
    edit = v.num(C5, "edit_dppl")
    general = v.num(C5, "general_dppl")
    n_start = int(v.num(C5, "logit_only_n_start"))
    damage = [general] + ([v.num(C5, "logit_dppl")] if n_start > 0 else [])
    our = (f"perplexity change: edit {edit:+.1f} %, logit-only with {n_start} start neurons "
           f"{v.num(C5, 'logit_dppl'):+.1f} %, the 2 general neurons {general:+.1f} %")
    if min(damage) > max(50.0, 10 * max(edit, 1.0)):
        return Outcome(our, "reproduced", "keeping start-position neurons costs at least ten times the edit's "
                                          "perplexity")
    if min(damage) > edit:
        return Outcome(our, "partly", "start-position neurons cost more, but less than ten times the edit")
    return Outcome(our, "not reproduced", "start-position neurons cost no more than the edit")


def _edit_second_arch(v: ResultsDir) -> Outcome:
    names = [str(n) for n in (v.params(C5).get("replicate_models") or [])]
    if not names:
        raise Missing(C5, "replicate_models", "ran no second model for")
    parts, below = [], []
    for name in names:
        if str(v.values(C5).get(f"replicate_{name}_choice", "")) == "none":
            parts.append(f"{name}: no edit chosen")
            below.append(False)
            continue
        d = v.interval(C5, f"replicate_{name}_d")
        if not d.has_ci:
            raise Missing(C5, f"replicate_{name}_d interval")
        parts.append(f"{name}: change in mean |b| {d.text('+.3f')}")
        below.append(d.high < 0)
    our = "; ".join(parts)
    if all(below):
        return Outcome(our, "reproduced", "on every other model the chosen edit's paired interval lies below zero")
    if any(below):
        return Outcome(our, "partly", "the chosen edit's paired interval lies below zero on some other models only")
    return Outcome(our, "not reproduced", "on no other model does the chosen edit's paired interval lie below zero")


def _edit_config(v: ResultsDir) -> Outcome:
    # n_selected: the size of the validation-chosen edit
    n_cand, n_sel = int(v.num(C5, "n_candidates_max")), int(v.num(C5, "n_selected"))
    strategy = str(v.values(C5).get("chosen_strategy", "one shot"))
    our = (f"{n_cand} candidates → {int(v.num(C5, 'n_dropped_start'))} start-position dropped → {strategy}: "
           f"{n_sel} edited ({int(v.num(C5, 'n_guard_failed'))} refused by the joint guard)")
    if n_cand >= 150 and n_sel == 50:
        return Outcome(our, "reproduced", "the paper's numbers of candidates and edited neurons")
    return Outcome(our, "partly", f"same pipeline from {n_cand} candidates; the validation rule chose "
                                  f"{n_sel} neurons rather than assuming the paper's 50")


# --- chapter 6: CRISPR and the head to head


def _crispr_gain(v: ResultsDir) -> Outcome:
    """Judged on the balanced accuracy sqrt(acc_ambig * acc_disambig) (chapter 6's pre-registered
    measure, which answering "unknown" everywhere cannot raise); plain accuracy is shown beside
    it, and a plain gain without a balanced one is named as the "unknown" artefact. Results from
    before the balanced measure fall back to plain accuracy."""
    d = v.interval(C6, "delta_acc").scaled(100)
    if not d.has_ci:
        raise Missing(C6, "delta_acc interval")
    our = (f"{v.num(C6, 'orig_acc'):.1f} % → {v.num(C6, 'crispr_acc'):.1f} % ({v.num(C6, 'gain_pp'):+.1f} points); "
           f"paired change {d.text('+.1f')} points")
    values = v.values(C6)
    unknown = (f"\"unknown\" answers {100 * v.num(C6, 'orig_unknown'):.0f} % → "
               f"{100 * v.num(C6, 'crispr_unknown'):.0f} %") if "orig_unknown" in values else None
    if "delta_bal" not in values:
        verdict = change_verdict(d.estimate, d.low, d.high, min(P2_GAINS))
        reason = {"reproduced": "the paired interval excludes zero and the gain reaches the paper's smallest",
                  "partly": "a detectable gain, smaller than the paper's smallest",
                  "not reproduced": "the paired interval includes zero or lies below it: no gain at this scale"}[verdict]
        if values.get("by_unknown") is True:
            # the pruned model answers "unknown" nearly always: right on every ambiguous item, wrong on
            # every disambiguated one; an accuracy gain of that kind is not the paper's
            our += f"; {unknown}"
            reason += "; the pruned model answers \"unknown\" nearly always, so any gain is not from reading the context"
            if verdict == "reproduced":
                verdict = "partly"
        return Outcome(our, verdict, f"{reason} (BBQ {v.get(C6, 'category_name')})")
    bal = v.interval(C6, "delta_bal").scaled(100)
    our += (f"; balanced accuracy {v.num(C6, 'orig_balanced_accuracy'):.2f} → "
            f"{v.num(C6, 'crispr_balanced_accuracy'):.2f} (paired {bal.text('+.1f')} points)")
    if unknown:
        our += f"; {unknown}"
    verdict = change_verdict(bal.estimate, bal.low, bal.high, min(P2_GAINS))
    reason = {"reproduced": "judged on balanced accuracy: its paired interval excludes zero and the gain reaches "
                            "the paper's smallest",
              "partly": "judged on balanced accuracy: a detectable gain, smaller than the paper's smallest",
              "not reproduced": "judged on balanced accuracy: its paired interval includes zero or lies below it"}[verdict]
    plain_gain = d.low is not None and d.low > 0
    if plain_gain and verdict == "not reproduced":
        reason += ("; the plain-accuracy gain is the \"unknown\" artefact (more \"unknown\" answers: right on "
                   "ambiguous items, wrong on disambiguated ones)")
    scoring = values.get("selection_scoring")
    return Outcome(our, verdict, f"{reason} (BBQ {v.get(C6, 'category_name')}"
                                 + (f", {scoring} option scoring" if scoring else "") + ")")


def _crispr_std(v: ResultsDir) -> Outcome:
    before, after = v.num(C6, "orig_std"), v.num(C6, "crispr_std")
    our = f"{before:.1f} → {after:.1f} points"
    if before <= 0:
        return Outcome(our, "not reproduced", "no spread across instructions to shrink in this run")
    verdict = "reproduced" if after <= before / 2 else ("partly" if after < before else "not reproduced")
    return Outcome(our, verdict, "reproduced when the spread at least halves, as in the paper's Table 2")


def _crispr_few(v: ResultsDir) -> Outcome:
    n = int(v.num(C6, "n_chosen"))
    our = f"n = {n} ({v.num(C6, 'n_chosen_share'):.4%} of the FFN neurons)"
    if n == 0:
        return Outcome(our, "not reproduced", "the dev search preferred no pruning at all")
    if n > P2_MAX_PRUNED:
        return Outcome(our, "partly", f"more neurons than the paper's largest count ({P2_MAX_PRUNED})")
    gain = _crispr_gain(v).verdict
    if gain == "not reproduced":
        return Outcome(our, gain, f"the dev search kept {n} neurons, but pruning them raises no accuracy (row p2-gain)")
    return Outcome(our, gain, f"{n} neurons (paper: 3 to {P2_MAX_PRUNED}) and the gain row says {gain}")


def _crispr_random(v: ResultsDir) -> Outcome:
    full, rnd, orig = v.num(C6, "abl_crispr"), v.num(C6, "abl_random_mean"), v.num(C6, "abl_original")
    our = f"CRISPR {full:.1f} %, random {rnd:.1f} % ({int(v.num(C6, 'abl_random_n'))} draws), original {orig:.1f} %"
    paper_gap = P2_TABLE5_SES["full"] - P2_TABLE5_SES["random"]
    verdict = "reproduced" if full - rnd >= paper_gap / 2 else ("partly" if full > rnd else "not reproduced")
    return Outcome(our, verdict, f"no interval recorded; reproduced from half the paper's {paper_gap:.1f}-point gap "
                                 "over random pruning")


def _crispr_ingredients(v: ResultsDir) -> Outcome:
    full = v.num(C6, "abl_crispr")
    parts = {k: v.num(C6, f"abl_{k}") for k in ("mean_tokens", "no_confidence", "no_skill")}
    helps = [full > x for x in parts.values()]
    our = f"full {full:.1f} %; " + ", ".join(f"{k.replace('_', ' ')} {x:.1f} %" for k, x in parts.items())
    verdict = "reproduced" if all(helps) else ("partly" if any(helps) else "not reproduced")
    return Outcome(our, verdict, f"removing an ingredient lowers accuracy for {sum(helps)} of 3 ingredients "
                                 "(no intervals recorded)")


def _crispr_transfer(v: ResultsDir) -> Outcome:
    cats = list(v.params(C6).get("transfer_categories") or [])
    if not cats:
        raise Missing(C6, "transfer_categories")
    gains = {c: v.num(C6, f"tr_{c}_pruned") - v.num(C6, f"tr_{c}_orig") for c in cats}
    our = "; ".join(f"{c} {v.num(C6, f'tr_{c}_orig'):.1f} → {v.num(C6, f'tr_{c}_pruned'):.1f} %" for c in cats)
    try:
        t = v.table(C6, "transfer")
        pruned = t[t.condition == "pruned"].set_index("category")
        sig = [float(pruned.loc[c, "accuracy_change_low"]) > 0 for c in cats]
        rule = "with an interval above 0"
    except (Missing, KeyError):
        sig = [g > 0 for g in gains.values()]
        rule = "(estimates; no intervals)"
    verdict = "reproduced" if all(sig) else ("partly" if any(sig) else "not reproduced")
    return Outcome(our, verdict, f"accuracy rises {rule} in {sum(sig)} of {len(cats)} other categories (neurons "
                                 f"found on {v.get(C6, 'category_name')})")


def _ppl_pct(t: pd.DataFrame, before: str, after: str) -> float | None:
    rows = t[t.metric == "perplexity"]
    if rows.empty:
        return None
    r = rows.iloc[0]
    return 100 * (float(r[after]) / float(r[before]) - 1)


def _crispr_capability(v: ResultsDir) -> Outcome:
    t = v.table(C6, "capability")
    acc = t[t.metric == "accuracy"]
    worst = 100 * float(acc["diff"].min()) if len(acc) else None
    ppl = _ppl_pct(t, "original", "pruned")
    our = (f"largest accuracy change {'–' if worst is None else f'{worst:+.1f}'} points; perplexity "
           f"{'–' if ppl is None else f'{ppl:+.1f} %'}")
    return Outcome(our, capability_verdict(worst, ppl),
                   f"kept when accuracy falls ≤ {ACC_TOL_PP:g} points and perplexity rises ≤ {PPL_TOL_PCT:g} %; "
                   f"partly within {ACC_PARTIAL_PP:g} points and {PPL_PARTIAL_PCT:g} %")


def _h2h_check(v: ResultsDir) -> None:
    if v.get(C6, "h2h_available") is not True:
        raise Missing(C6, "h2h_available", message="chapter 6 ran without the head-to-head (chapter 5's edit "
                                                   "was not saved when chapter 6 ran)")


def _h2h_bbq(v: ResultsDir) -> Outcome:
    _h2h_check(v)
    t = v.table(C6, "h2h_bbq")
    if "scoring" in t:  # one row per scoring: read the one chapter 6 chose n by
        t = t[t["scoring"] == v.values(C6).get("selection_scoring", "summed")]
    t = t.set_index("condition")
    ov = v.get(C6, "h2h_overlap")
    o = float(t.loc["original", "mean_accuracy"])
    edits = [c for c in t.index if c != "original"]
    our = ", ".join(f"{c} {_pct(float(t.loc[c, 'mean_accuracy']), 1)}" for c in ["original"] + edits)
    our += f"; neuron sets share {ov['n_shared']} (Jaccard {ov['jaccard']:.2f})"
    up = [float(t.loc[c, "accuracy_low"]) > o for c in edits]
    verdict = "reproduced" if all(up) else ("partly" if any(up) else "not reproduced")
    return Outcome(our, verdict, f"{sum(up)} of {len(edits)} edits raise BBQ accuracy (interval above the original's "
                                 "estimate) on the same items")


def _h2h_capability(v: ResultsDir) -> Outcome:
    _h2h_check(v)
    t = v.table(C6, "h2h_capability")
    base = t[t.condition == "original"].set_index("task")
    parts, verdicts = [], []
    for cond in [c for c in t.condition.unique() if c != "original"]:
        sub = t[t.condition == cond].set_index("task")
        acc = [100 * (float(sub.loc[k, "value"]) - float(base.loc[k, "value"]))
               for k in sub.index if sub.loc[k, "metric"] == "accuracy" and k in base.index]
        ppl = [100 * (float(sub.loc[k, "value"]) / float(base.loc[k, "value"]) - 1)
               for k in sub.index if sub.loc[k, "metric"] == "perplexity" and k in base.index]
        worst, dppl = (min(acc) if acc else None), (ppl[0] if ppl else None)
        verdicts.append(capability_verdict(worst, dppl))
        parts.append(f"{cond}: worst task {'–' if worst is None else f'{worst:+.1f}'} points, perplexity "
                     f"{'–' if dppl is None else f'{dppl:+.1f} %'}")
    if not verdicts:
        raise Missing(C6, "h2h_capability conditions")
    return Outcome("; ".join(parts), _worst(verdicts), "the worse of the two edits under the capability rule "
                                                       f"(≤ {ACC_TOL_PP:g} points, ≤ {PPL_TOL_PCT:g} % perplexity)")


# --- the list

_P1_GENERAL = "2 FFN neurons with very high query scores at <start> (ffnL2N7003, ffnL2N4090 in Llama)"
_CATEGORIES = ("traits", "actions", "professions", "hobbies", "colors")

CLAIMS: list[Claim] = [
    Claim("p1-nurse", PAPER1, C0, "Figure 1's running example: \"The nurse is a\" → \" woman\"",
          "woman (Figure 1)", _nurse),
    Claim("p1-commonwords", PAPER1, C1, "CommonWords: 500 everyday words in five categories (traits, actions, "
          "professions, hobbies, colors)", "500 words, 5 categories", _cw_dataset),
    Claim("p1-cw-bias", PAPER1, C2, "Models lean to one gender on everyday words",
          "not reported (pervasive bias in all five LLMs tested)", _per_model(_cw_lean)),
    *[Claim(f"p1-cw-{c}", PAPER1, C2, f"Words of the {c} category lean to one gender",
            "not reported (bias in every category)", _cw_category(c)) for c in _CATEGORIES],
    Claim("base-stereoset", BASELINE, C2, "StereoSet (gender): the unedited model prefers stereotypes (SS > 50)",
          f"not reported (ICAT {P1_ICAT[0]} for the comparator of the edit)", _per_model(_stereoset)),
    Claim("base-winogender", BASELINE, C2, "WinoGender: the unedited model prefers one pronoun gender",
          f"entropy difference {P1_ENTROPY[0]} for the comparator (formula unknown)", _per_model(_winogender)),
    Claim("base-bbq-accuracy", BASELINE, C2, "BBQ: the unedited model answers above chance",
          f"{min(P2_ORIGINALS):.2f}–{max(P2_ORIGINALS):.2f} % before CRISPR (Flan-T5, T0; SES, Age, Disability; "
          "gender identity not reported)", _per_model(_bbq_accuracy)),
    Claim("base-bbq-bias", BASELINE, C2, "BBQ (gender identity): the unedited model's answers are stereotyped",
          "not reported (CRISPR reports accuracy only)", _per_model(_bbq_bias)),
    Claim("base-winobias", BASELINE, C2, "WinoBias: coreference is more accurate on pro- than anti-stereotypical "
          "sentences", "not reported", _per_model(_winobias)),
    Claim("p1-route", PAPER1, C3, "Bias flows from shallow FFN query neurons through attention neurons to deep FFN "
          "value neurons", "query L11, L14 → attention L18H7 → value L20+ (Llama, 32 layers)", _route),
    *[Claim(f"p1-shared-{k}", PAPER1, C3, f"Shared frequency at K = 10 is about 60 % ({KIND_NAMES[k]} neurons)",
            "≈60 % at K = 10", _shared(k)) for k in KIND_NAMES],
    Claim("p1-shared-k", PAPER1, C3, "Fewer neurons per prompt (K = 10) are more shared than larger K",
          "higher at K = 10 than at larger K (no number for larger K)", _shared_vs_k),
    Claim("p1-start-route", PAPER1, C3, "General neurons: the query score reaches the prediction through the start "
          "token", "not reported (general neurons are activated by <start>)", _start_share),
    Claim("p1-word-route", PAPER1, C3, "Gender neurons work at the stereotyped word's position",
          "not reported (gender neurons are activated by the stereotyped word)", _word_route),
    Claim("p1-gender-neurons", PAPER1, C3, "Interpretable gender neurons exist (female tokens at one end of the "
          "projection, male at the other)", "e.g. ffnL11N17: herself, woman, actress vs himself, male, boy (Table 2)",
          _gender_exist),
    Claim("p1-gender-top", PAPER1, C3, "The top attributed neurons are gender neurons",
          "not reported (Table 2 lists gender neurons among the important ones)", _gender_top),
    Claim("p1-general-exist", PAPER1, C4, "General neurons exist and are found at the start token", _P1_GENERAL,
          _ch4("verdict_exist", _g_exist)),
    Claim("p1-general-layer", PAPER1, C4, "General neurons sit in a shallow layer", "FFN layer 2 (of 32)",
          _g_layer_row),
    Claim("p1-general-collapse", PAPER1, C4, "Masking the two general neurons collapses arithmetic and reading "
          "comprehension", f"arithmetic {P1_ARITH[0]} % → {P1_ARITH[1]} %; RACE {P1_RACE[0]} % → {P1_RACE[1]} %",
          _ch4("verdict_collapse", _g_collapse)),
    Claim("p1-general-signs", PAPER1, C4, "Masking them flips the coefficient signs of deeper arithmetic neurons",
          "sign reversals for \"3+5=\" (Table 3; no count reported)", _ch4("verdict_mechanism", _g_mechanism)),
    Claim("p1-general-start-token", PAPER1, C4, "The general neurons belong to position 0, whatever token sits there",
          "not reported (Llama's <s> only)", _ch4("verdict_start", _g_start)),
    Claim("p1-general-second-arch", PAPER1, C4, "The collapse holds on a second architecture",
          "not reported (general neurons shown for Llama only)", _ch4("verdict_replicate", _g_replicate)),
    Claim("p1-edit-reduces", PAPER1, C5, "Neuron editing reduces gender bias (held-out CommonWords words)",
          "not reported (bias reduced)", _edit_reduces),
    Claim("p1-edit-capability", PAPER1, C5, "The edit keeps common capabilities",
          "not reported (common tasks roughly preserved)", _edit_capability),
    Claim("p1-edit-icat", PAPER1, C5, "The edit raises StereoSet ICAT", f"{P1_ICAT[0]} → {P1_ICAT[1]}",
          lambda v: _relative_gain(v, "icat_orig", "icat_edit", P1_ICAT, ".1f")),
    Claim("p1-edit-entropy", PAPER1, C5, "The edit lowers the WinoGender entropy difference",
          f"{P1_ENTROPY[0]} → {P1_ENTROPY[1]}", lambda v: _relative_gain(v, "ent_orig", "ent_edit", P1_ENTROPY, ".3f")),
    Claim("p1-edit-baselines", PAPER1, C5, "The edit beats fine-tuning and simpler editing baselines",
          "not reported (beats fine-tuning and editing approaches)", _edit_baselines),
    Claim("p1-start-filter", PAPER1, C5, "Excluding start-position neurons avoids capability damage",
          "not reported (the <start> filter protects common tasks)", _start_filter),
    Claim("p1-edit-second-arch", PAPER1, C5, "The edit reduces bias on a second architecture",
          "not reported (one model family)", _edit_second_arch),
    Claim("p1-edit-size", PAPER1, C5, "The method edits 50 neurons chosen from 150 candidates",
          "150 candidates (50 FFN value, 50 attention value, 50 FFN query) → 50", _edit_config),
    Claim("p2-gain", PAPER2, C6, "Pruning bias neurons raises BBQ accuracy",
          f"{min(P2_GAINS):+.1f} to {max(P2_GAINS):+.1f} points (Table 1: Flan-T5-base/large/xl, T0; SES, Age, "
          "Disability)", _crispr_gain),
    Claim("p2-std", PAPER2, C6, "Pruning narrows the spread of accuracy across instructions",
          "1.44 → 0.67 (base, SES); 4.17 → 0.65 (base, MRPC); 1.82 → 0.43 (xl, Disability)", _crispr_std),
    Claim("p2-few", PAPER2, C6, "A few neurons suffice", f"3 to {P2_MAX_PRUNED} neurons, 0.0005–0.075 % (Table 3; "
          "at least three)", _crispr_few),
    Claim("p2-ablation-random", PAPER2, C6, "Random pruning of the same number of neurons does not help",
          f"random {P2_TABLE5_SES['random']} vs full {P2_TABLE5_SES['full']} % (base, SES; original 65.63)",
          _crispr_random),
    Claim("p2-ablation-ingredients", PAPER2, C6, "Each ingredient (max over tokens, confidence weight, skill term) "
          "adds accuracy", f"full {P2_TABLE5_SES['full']} vs {P2_TABLE5_SES['no_skill']}–{P2_TABLE5_SES['mean_tokens']}"
          " % without one (base, SES)", _crispr_ingredients),
    Claim("p2-transfer", PAPER2, C6, "Bias neurons found on one BBQ category help on others",
          "not reported (SES neurons help Age and Disability)", _crispr_transfer),
    Claim("p2-capability", PAPER2, C6, "Pruning keeps task performance and knowledge",
          "not reported (no loss of task performance)", _crispr_capability),
    Claim("p2-nlu", PAPER2, C6, "CRISPR also helps NLU tasks",
          "MRPC 60.95 → 73.27, RTE 68.16 → 76.46, QNLI 80.51 → 84.44 % (Flan-T5-base)",
          _not_tested_by_design("the study runs no NLU tasks (MRPC, RTE, QNLI are not in the local data)")),
    Claim("p2-calibration", PAPER2, C6, "Calibration baselines (CC, DC) lower BBQ accuracy",
          "CC 43.95, DC 47.78 vs original 65.63 % (base, SES)",
          _not_tested_by_design("contextual and domain-context calibration are not implemented")),
    Claim("h2h-bbq", HEAD2HEAD, C6, "On the same BBQ items, both CRISPR's pruning and chapter 5's gender edit raise "
          "accuracy", "not reported (the two methods were never compared)", _h2h_bbq),
    Claim("h2h-capability", HEAD2HEAD, C6, "On the same capability tasks, both edits keep accuracy and perplexity",
          "not reported (each paper: capabilities preserved)", _h2h_capability),
]

COLUMNS = ["id", "paper", "chapter", "claim", "paper_value", "our_value", "model", "profile", "verdict", "reason"]


def compare(directory: str | Path | None = None, claims: list[Claim] | None = None) -> pd.DataFrame:
    """The comparison table: one row per claim (per model where a chapter compared models).

    Args:
        directory: the results directory (default :func:`~analysis_lib.results.results_dir`).
        claims: the claims to evaluate (default :data:`CLAIMS`).

    Returns:
        A DataFrame with the columns :data:`COLUMNS`: ``claim``, ``paper_value`` and
        ``our_value`` (with its 95 % interval where the chapter recorded one), ``model``,
        ``chapter``, ``verdict`` (one of :data:`VERDICTS`) and a one-line ``reason``. A claim
        whose inputs are missing gets ``our_value`` :data:`NOT_TESTED` and verdict "not tested".
    """
    view = ResultsDir(directory)
    rows = []
    for c in claims if claims is not None else CLAIMS:
        try:
            outcomes = c.evaluate(view)
        except Missing as exc:
            outcomes = Outcome(NOT_TESTED, "not tested", f"{NOT_TESTED}: {exc}")
        except LookupError as exc:  # a row or column of a table is absent: the part did not run
            outcomes = Outcome(NOT_TESTED, "not tested", f"{NOT_TESTED}: {c.chapter} lacks {exc}")
        for o in outcomes if isinstance(outcomes, list) else [outcomes]:
            rows.append({"id": c.id if o.model is None else f"{c.id}:{o.model}", "paper": c.paper,
                         "chapter": c.chapter, "claim": o.claim or c.claim, "paper_value": c.paper_value,
                         "our_value": o.our_value, "model": o.model or view.model(c.chapter),
                         "profile": view.profile(c.chapter), "verdict": o.verdict, "reason": o.reason})
    return pd.DataFrame(rows, columns=COLUMNS)


def chapter_status(directory: str | Path | None = None) -> pd.DataFrame:
    """Which chapters' results the directory holds, with their model and profile."""
    view = ResultsDir(directory)
    return pd.DataFrame([{"chapter": c, "ran": view.has(c), "model": view.model(c), "profile": view.profile(c)}
                         for c in CHAPTERS.values()])


def profile_summary(status: pd.DataFrame) -> str:
    """One sentence on the profiles the chapters ran in (the table mixes them when they differ)."""
    ran = status[status.ran]
    missing = list(status.chapter[~status.ran])
    if ran.empty:
        return "No chapter has written its results yet, so every claim is not tested in this run."
    groups = ran.groupby("profile").chapter.apply(lambda s: ", ".join(x[:2] for x in s))
    text = ("All chapters that ran used the " + f"{groups.index[0]} profile." if len(groups) == 1 else
            "The chapters ran in different profiles (" + "; ".join(f"{p}: {c}" for p, c in groups.items()) + ").")
    if missing:
        text += f" Not run: {', '.join(m[:2] for m in missing)}."
    return text


def verdict_counts(table: pd.DataFrame, by: str | None = None) -> pd.DataFrame | pd.Series:
    """How many rows have each verdict (overall, or a table ``by`` one column)."""
    if by is None:
        return table.verdict.value_counts().reindex(list(VERDICTS), fill_value=0)
    return pd.crosstab(table[by], table.verdict).reindex(columns=list(VERDICTS), fill_value=0)


def verdict_list(table: pd.DataFrame, verdict: str) -> str:
    """The claims with this verdict, in words, as one text (``"none"`` when there are none).

    Each claim is its ``claim`` text (from :data:`CLAIMS`, or the per-model override), with the
    model in parentheses for the rows about another model than the chapter's (ids ``claim:model``);
    the claims are separated by semicolons, since the texts hold commas.
    """
    rows = table[table.verdict == verdict]
    items = [f"{r.claim} ({r.model})" if ":" in r.id else r.claim for r in rows.itertuples()]
    return "; ".join(items) if items else "none"


def verdict_colors() -> dict[str, Any]:
    """Colour-blind-safe colours for the four verdicts (seaborn's ``colorblind`` palette)."""
    import seaborn as sns

    pal = sns.color_palette("colorblind")
    return {"reproduced": pal[0], "partly": pal[9], "not reproduced": pal[3], "not tested": pal[7]}


def style(table: pd.DataFrame, chapters: Iterable[str] | None = None):
    """A compact pandas Styler of the comparison rows (of ``chapters``; short names like ``"03"`` work).

    The verdict cells are coloured as in :func:`plot_verdicts`. When every row shown is about one
    model, the model moves from a column to the caption.
    """
    rows = table
    if chapters is not None:
        wanted = {CHAPTERS.get(c, c) for c in chapters}
        rows = table[table.chapter.isin(wanted)]
    colors = verdict_colors()

    def paint(v: str) -> str:
        r, g, b = (int(255 * x) for x in colors.get(v, (1, 1, 1)))
        return f"background-color: rgba({r}, {g}, {b}, 0.35)"

    cols = ["id", "claim", "paper_value", "our_value", "model", "verdict", "reason"]
    one_model = rows.model.nunique() == 1
    if one_model:
        cols.remove("model")
    show = rows[cols].rename(columns={"paper_value": "paper value", "our_value": "our value"})
    styler = show.style.map(paint, subset=["verdict"]).hide(axis="index").set_table_styles([
        {"selector": "", "props": "font-size: 0.8em; width: 100%;"},
        {"selector": "td, th", "props": "vertical-align: top; text-align: left; padding: 3px 5px;"},
    ])
    if one_model and len(rows):
        styler = styler.set_caption(f"model: {rows.model.iloc[0]}")
    return styler


def plot_verdicts(table: pd.DataFrame, ax=None):
    """Stacked horizontal bars: how many claims of each chapter got each verdict (seaborn)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.4))
    names = {c: c.replace("_", " ", 1).replace("_", " ") for c in CHAPTERS.values()}
    data = table.assign(chapter_label=pd.Categorical(table.chapter.map(names), categories=list(names.values())),
                        verdict=pd.Categorical(table.verdict, categories=list(VERDICTS)))
    # seaborn stacks the last hue first: reversed, "reproduced" sits at the left of each bar
    sns.histplot(data=data, y="chapter_label", hue="verdict", hue_order=list(VERDICTS)[::-1], multiple="stack",
                 palette=verdict_colors(), discrete=True, shrink=0.75, alpha=1, ax=ax)
    ax.xaxis.get_major_locator().set_params(integer=True)
    label(ax, "number of claims", "chapter", "Verdicts by chapter")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), title="verdict", frameon=False)
    return ax


# ----------------------------------------------------------------------------- learner checks


def _check(name: str, fn: Callable, reference: Callable, cases: list[tuple]):
    from .checks import CheckResult  # local: chapter 7 runs no model (checks imports torch via models)

    for args in cases:
        try:
            got = fn(*args)
        except Exception as exc:  # noqa: BLE001 - the learner's code may raise anything
            msg, ok = f"{name}{args} raised {type(exc).__name__}: {exc}.", False
            break
        want = reference(*args)
        if got != want:
            msg, ok = f"{name}{args} returned {got!r} but the reference gives {want!r}.", False
            break
    else:
        msg, ok = f"{name} matches the reference on {len(cases)} cases.", True
    print(("✔ " if ok else "✘ ") + msg)
    return CheckResult(ok, msg)


def check_interval_verdict(fn: Callable[[float, float, float, float], str]):
    """``fn(low, high, target, tol)`` must behave like :func:`interval_verdict`."""
    cases = [(0.55, 0.67, 0.6, 0.1), (0.73, 0.81, 0.6, 0.1), (0.62, 0.9, 0.6, 0.1), (0.85, 0.95, 0.6, 0.1),
             (0.2, 0.35, 0.6, 0.1), (0.1, 0.45, 0.6, 0.1), (0.45, 0.48, 0.6, 0.1), (59.0, 63.0, 61.6, 1.0)]
    return _check("interval_verdict", fn, interval_verdict, cases)


def check_change_verdict(fn: Callable[[float, float, float, float], str]):
    """``fn(estimate, low, high, paper_change)`` must behave like :func:`change_verdict`."""
    cases = [(8.0, 3.0, 13.0, 6.05), (2.0, 0.5, 3.5, 6.05), (0.0, -4.0, 4.0, 6.05), (-5.0, -9.0, -1.0, 6.05),
             (-0.2, -0.3, -0.1, -0.14), (-0.05, -0.08, -0.02, -0.14), (0.01, -0.02, 0.04, -0.14),
             (6.5, 1.0, 12.0, 6.05)]
    return _check("change_verdict", fn, change_verdict, cases)
