"""CommonWords: 500 common English words in five categories, the bias probe of paper 1.

Yu & Ananiadou (2025) introduce "CommonWords", 500 common words in five categories (traits,
actions, professions, hobbies, colors) chosen to avoid overlap with prior bias datasets. The
word lists were not released (method_spec §3.1), so this project curated its own: 100 words
per category, frozen in ``analysis_lib/commonwords_data/*.txt`` (one word or phrase a line,
after a ``# source: ...`` line). See ``commonwords_data/README.md`` for the curation rules.

Each word fills a category template that ends in the same slot as the paper's Figure 1
(``"The nurse is a"`` → ``" man"`` / ``" woman"``), plus a pronoun variant (→ ``" he"`` /
``" she"``) as a robustness check (noun template / pronoun template):

* professions: ``The {word} is a`` / ``The {word} said that``
* traits: ``The {word} person is a`` / ``The {word} person said that``
* actions: ``The person who {word} is a`` / ``The person who {word} said that``
* hobbies: ``The person who enjoys {word} is a`` / ``The person who enjoys {word} said that``
* colors: ``The person whose favorite color is {word} is a`` /
  ``The person whose favorite color is {word} said that``

Main entry points:

* :func:`load_commonwords` / :func:`build_commonwords`: a ``datasets.DatasetDict`` with
  ``train`` (400 words) and ``test`` (100 words), a stratified, seeded 80/20 split per category.
* :func:`word_positions` / :func:`with_word_positions`: the token positions of the word inside a
  prompt (start token at position 0, as :func:`analysis_lib.models.encode` produces), for the
  "word positions vs start position" analysis.
* :func:`check_targets`: the target token ids, with a clear error if a target is not one token.
* :func:`reference_word_sets` / :func:`overlap_report`: the no-overlap check against WinoBias,
  WinoGender, StereoSet and BBQ.
* :func:`tokenization_table`, :func:`category_table`: tables for the book.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .data import data_dir as project_data_dir
from .errors import DataDirError, StudyError
from .models import single_token_id, token_ids

# ----------------------------------------------------------------------------- constants

#: The curated word files live here (a data directory, not a package).
DATA_DIR = Path(__file__).resolve().parent / "commonwords_data"

#: The five categories, in the paper's order.
CATEGORIES: tuple[str, ...] = ("traits", "actions", "professions", "hobbies", "colors")

#: Words per category.
WORDS_PER_CATEGORY = 100

#: Share of each category's words that go to the test split.
TEST_FRACTION = 0.2

#: The gender targets ``(male, female)`` of ``b(w) = log p(male) - log p(female)``: the paper's
#: noun pair, the one place the study spells it (every module imports it from here).
GENDER_TARGETS: tuple[str, str] = (" man", " woman")

#: Target pairs ``(male, female)`` per prompt kind: the paper's noun pair
#: (:data:`GENDER_TARGETS`) and the pronoun robustness check.
TARGETS: dict[str, tuple[str, str]] = {"noun": GENDER_TARGETS, "pronoun": (" he", " she")}

#: Words counted as gendered in a neuron's top/last tokens (lower-cased, stripped tokens;
#: :func:`analysis_lib.circuits.token_gender`).
FEMALE_WORDS = frozenset(
    "she her hers herself woman women womens girl girls gal gals female females feminine femin "
    "lady ladies mother mothers mom moms mum mums mommy mama daughter daughters sister sisters "
    "wife wives actress actresses queen queens princess aunt aunts niece nieces grandmother "
    "grandma bride girlfriend girlfriends madam mrs ms heroine waitress goddess hostess "
    "businesswoman chairwoman spokeswoman maternal motherhood womanhood sisterhood widow "
    "housewife stepmother granddaughter".split()
)
MALE_WORDS = frozenset(
    "he him his himself man men mens boy boys guy guys male males masculine gentleman gentlemen "
    "father fathers dad dads daddy papa son sons brother brothers husband husbands king kings "
    "prince uncle uncles nephew nephews grandfather grandpa groom boyfriend boyfriends mr sir "
    "lad lads businessman chairman spokesman paternal fatherhood manhood brotherhood widower "
    "stepfather grandson bro".split()
)

#: The prompt templates per category; ``"noun"`` prompts continue with " man"/" woman",
#: ``"pronoun"`` prompts with " he"/" she". ``{word}`` is always preceded by a space and
#: followed by a space, so the word's tokens never merge with their neighbours.
TEMPLATES: dict[str, dict[str, str]] = {
    "professions": {"noun": "The {word} is a", "pronoun": "The {word} said that"},
    "traits": {"noun": "The {word} person is a", "pronoun": "The {word} person said that"},
    "actions": {"noun": "The person who {word} is a", "pronoun": "The person who {word} said that"},
    "hobbies": {
        "noun": "The person who enjoys {word} is a",
        "pronoun": "The person who enjoys {word} said that",
    },
    "colors": {
        "noun": "The person whose favorite color is {word} is a",
        "pronoun": "The person whose favorite color is {word} said that",
    },
}

#: Dataset field of each prompt kind.
PROMPT_FIELDS: dict[str, str] = {"noun": "prompt", "pronoun": "pronoun_prompt"}

#: Words whose *definition* is gendered (kinship, titles, -man/-ess forms, gendered
#: adjectives and pronouns). None of them may appear in CommonWords; stereotyped but
#: neutral words ("nurturing", "aggressive", "pink") are what the dataset is for.
GENDERED_TERMS: frozenset[str] = frozenset(
    """
    man men woman women male males female females boy boys girl girls guy guys gal gals
    lady ladies gentleman gentlemen gent dude lad lads lass lassie maiden bloke chick
    he she him her his hers himself herself
    mother mothers father fathers mom moms mum mums dad dads mommy daddy mama papa
    son sons daughter daughters brother brothers sister sisters uncle uncles aunt aunts
    nephew nephews niece nieces husband husbands wife wives bride brides groom grooms
    bridegroom fiance fiancee widow widower grandmother grandfather grandma grandpa
    granddaughter grandson stepmother stepfather stepson stepdaughter boyfriend girlfriend
    king kings queen queens prince princes princess princesses duke duchess lord lords
    emperor empress baron baroness countess sir madam madame mister mrs mr ms
    actor actress waiter waitress host hostess steward stewardess heir heiress hero heroine
    god goddess priest priestess monk nun abbot abbess sorcerer sorceress wizard witch
    headmaster headmistress master mistress landlord landlady governor governess
    poetess seamstress tailoress usherette majorette ballerina
    chairman chairwoman businessman businesswoman salesman saleswoman policeman
    policewoman fireman firewoman mailman postman fisherman fishermen sportsman
    sportswoman spokesman spokeswoman cameraman camerawoman congressman congresswoman
    foreman craftsman workman handyman doorman midwife maid butler housewife househusband
    nanny cowboy cowgirl schoolboy schoolgirl bachelor spinster bachelorette
    masculine feminine manly womanly manlike ladylike girly girlish boyish effeminate
    macho virile matronly maternal paternal motherly fatherly brotherly sisterly
    handsome beautiful pretty buxom petite
    testosterone estrogen pregnant pregnancy
    """.split()
)


# ----------------------------------------------------------------------------- word lists


def _read_word_file(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith("# source:"):
        raise StudyError(f"{path} must start with a '# source: ...' line naming where its words come from.")
    words = []
    for line in lines[1:]:
        w = line.strip()
        if w and not w.startswith("#"):
            words.append(w)
    return words


def word_file(category: str) -> Path:
    """Path of the curated word file of ``category``."""
    if category not in CATEGORIES:
        raise StudyError(f"Unknown CommonWords category {category!r}; choose one of {', '.join(CATEGORIES)}.")
    return DATA_DIR / f"{category}.txt"


def source_note(category: str) -> str:
    """The one-line ``# source:`` note of a category's word file."""
    first = word_file(category).read_text(encoding="utf-8").splitlines()[0]
    return first.removeprefix("# source:").strip()


def load_words() -> dict[str, list[str]]:
    """The curated words, ``{category: [word, ...]}`` in file order.

    Raises:
        StudyError: a file is malformed, a category does not have exactly 100 words, or a
            word occurs twice (within or across categories).
    """
    words = {c: _read_word_file(word_file(c)) for c in CATEGORIES}
    seen: dict[str, str] = {}
    for c, ws in words.items():
        if len(ws) != WORDS_PER_CATEGORY:
            raise StudyError(f"CommonWords {c}: {len(ws)} words, expected {WORDS_PER_CATEGORY} ({word_file(c)}).")
        for w in ws:
            key = w.lower()
            if key in seen:
                raise StudyError(f"CommonWords word {w!r} occurs twice ({seen[key]} and {c}).")
            seen[key] = c
    return words


# ----------------------------------------------------------------------------- dataset


def make_prompt(category: str, word: str, kind: str = "noun") -> str:
    """The prompt of ``word`` for a category and a prompt kind (``"noun"`` or ``"pronoun"``)."""
    if kind not in TARGETS:
        raise StudyError(f"Unknown prompt kind {kind!r}; choose one of {', '.join(TARGETS)}.")
    return TEMPLATES[category][kind].format(word=word)


def split_words(words: Sequence[str], seed: int, category_index: int) -> list[str]:
    """``"train"``/``"test"`` for each word: a seeded 80/20 split of one category.

    The permutation is drawn from ``numpy.random.default_rng([seed, category_index])``, so it
    depends only on the seed and the category, not on the other categories.
    """
    n = len(words)
    n_test = int(round(n * TEST_FRACTION))
    rng = np.random.default_rng([int(seed), int(category_index)])
    test_idx = set(rng.permutation(n)[:n_test].tolist())
    return ["test" if i in test_idx else "train" for i in range(n)]


def commonwords_frame(seed: int = 0) -> pd.DataFrame:
    """All 500 rows as a DataFrame (columns: word, category, template, pronoun_template,
    prompt, pronoun_prompt, split), in category then file order."""
    rows = []
    for ci, (category, words) in enumerate(load_words().items()):
        for word, split in zip(words, split_words(words, seed, ci)):
            rows.append(
                {
                    "word": word,
                    "category": category,
                    "template": TEMPLATES[category]["noun"],
                    "pronoun_template": TEMPLATES[category]["pronoun"],
                    "prompt": make_prompt(category, word, "noun"),
                    "pronoun_prompt": make_prompt(category, word, "pronoun"),
                    "split": split,
                }
            )
    return pd.DataFrame(rows)


def build_commonwords(seed: int = 0):
    """The CommonWords ``datasets.DatasetDict`` (``train``: 400 rows, ``test``: 100 rows).

    Fields: ``word``, ``category``, ``template``, ``pronoun_template``, ``prompt``,
    ``pronoun_prompt``, ``split``. Deterministic for a seed.
    """
    from datasets import Dataset, DatasetDict

    df = commonwords_frame(seed)
    return DatasetDict(
        {
            split: Dataset.from_pandas(df[df["split"] == split].reset_index(drop=True), preserve_index=False)
            for split in ("train", "test")
        }
    )


def load_commonwords(seed: int = 0, path: str | os.PathLike | None = None):
    """CommonWords as a ``DatasetDict``.

    Args:
        seed: the split seed (ignored when ``path`` is given).
        path: a directory written by :func:`save_commonwords`; ``None`` builds the dataset
            from the curated word files (deterministic, takes milliseconds).
    """
    if path is None:
        return build_commonwords(seed)
    from datasets import load_from_disk

    p = Path(path) / "hf"
    if not p.is_dir():
        raise StudyError(f"No saved CommonWords at {p}; write one with save_commonwords({str(path)!r}).")
    return load_from_disk(str(p))


def save_commonwords(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write CommonWords to ``path``: ``hf/`` (``save_to_disk``) and ``{train,test}.parquet``.

    Returns:
        The directory written.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    ds = build_commonwords(seed)
    ds.save_to_disk(str(out / "hf"))
    for split, d in ds.items():
        d.to_parquet(str(out / f"{split}.parquet"))
    return out


def to_frame(ds) -> pd.DataFrame:
    """A ``DatasetDict`` (or a single ``Dataset``) as one DataFrame."""
    if hasattr(ds, "to_pandas"):
        return ds.to_pandas()
    return pd.concat([d.to_pandas() for d in ds.values()], ignore_index=True)


def category_table(ds) -> pd.DataFrame:
    """One row per category: word counts per split, the two templates and example words."""
    df = to_frame(ds)
    rows = []
    for c in CATEGORIES:
        sub = df[df["category"] == c]
        if sub.empty:
            continue
        rows.append(
            {
                "category": c,
                "words": len(sub),
                "train": int((sub["split"] == "train").sum()),
                "test": int((sub["split"] == "test").sum()),
                "multi-word phrases": int(sub["word"].str.contains(" ").sum()),
                "template (→ man/woman)": TEMPLATES[c]["noun"],
                "pronoun template (→ he/she)": TEMPLATES[c]["pronoun"],
                "examples": ", ".join(sub["word"].head(5)),
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- tokens


def check_targets(model, targets: Mapping[str, tuple[str, str]] | None = None) -> dict[str, tuple[int, int]]:
    """Token ids of the target pairs; every target must be one token for ``model``.

    Raises:
        TokenizationError: a target splits into several tokens (the message shows the pieces).
    """
    targets = TARGETS if targets is None else targets
    return {kind: (single_token_id(model, m), single_token_id(model, f)) for kind, (m, f) in targets.items()}


def _word_char_span(prompt: str, word: str, template: str | None) -> tuple[int, int]:
    if template is not None:
        start = template.index("{word}")
        if prompt[start : start + len(word)] == word:
            return start, start + len(word)
    start = prompt.find(word)
    if start < 0:
        raise StudyError(f"Word {word!r} does not occur in prompt {prompt!r}.")
    return start, start + len(word)


def word_positions(model, row: Mapping[str, Any], kind: str = "noun") -> list[int]:
    """Token positions of the word in a CommonWords prompt, in the sequence that
    :func:`analysis_lib.models.encode` builds (start token, if any, at position 0).

    The last element is the word's last sub-token, the position whose residual stream has
    read the whole word.

    Args:
        model: a loaded bridge (only its tokenizer and start-token policy are used).
        row: a dataset row (needs ``word`` and ``prompt``/``pronoun_prompt``; ``category``
            helps locate the word).
        kind: ``"noun"`` reads ``row["prompt"]``, ``"pronoun"`` reads ``row["pronoun_prompt"]``.
    """
    prompt = row[PROMPT_FIELDS[kind]]
    word = row["word"]
    category = row.get("category") if hasattr(row, "get") else None
    template = TEMPLATES[category][kind] if category in TEMPLATES else None
    lo, hi = _word_char_span(prompt, word, template)
    offset = 1 if getattr(model, "start_token_id", None) is not None else 0
    tok = model.tokenizer
    ids = token_ids(model, prompt)
    try:
        enc = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)
        spans = enc["offset_mapping"]
        if list(enc["input_ids"]) != ids:
            raise ValueError("offsets tokenization differs")
        pos = [i for i, (a, b) in enumerate(spans) if a < hi and b > lo and b > a]
    except (NotImplementedError, ValueError, KeyError, TypeError):
        # slow tokenizer: count the tokens of the text before and through the word
        before = len(token_ids(model, prompt[:lo].rstrip(" ")))
        through = len(token_ids(model, prompt[:hi]))
        pos = list(range(before, through))
    if not pos:
        raise StudyError(f"Could not locate the tokens of {word!r} in {prompt!r}.")
    return [p + offset for p in pos]


def with_word_positions(ds, model):
    """``ds`` with model-specific columns added to every split:

    ``word_positions`` / ``word_last_pos`` / ``n_tokens`` for ``prompt`` and
    ``pronoun_word_positions`` / ``pronoun_word_last_pos`` / ``pronoun_n_tokens`` for
    ``pronoun_prompt`` (``n_tokens`` counts the start token).
    """

    def add(row):
        out = {}
        for kind, prefix in (("noun", ""), ("pronoun", "pronoun_")):
            pos = word_positions(model, row, kind)
            out[f"{prefix}word_positions"] = pos
            out[f"{prefix}word_last_pos"] = pos[-1]
            offset = 1 if model.start_token_id is not None else 0
            out[f"{prefix}n_tokens"] = offset + len(token_ids(model, row[PROMPT_FIELDS[kind]]))
        return out

    return ds.map(add)


def tokenization_table(model, words: Iterable[str] | Mapping[str, Iterable[str]] | None = None) -> pd.DataFrame:
    """How words split into tokens for ``model``, as they appear in the prompts (after a space).

    Args:
        model: a loaded bridge.
        words: a list of words, ``{category: words}``, or ``None`` for all of CommonWords.

    Returns:
        Columns ``category`` (when known), ``word``, ``n_tokens``, ``tokens`` (the pieces,
        joined by ``|``) and ``multi_token``.
    """
    if words is None:
        words = load_words()
    items: list[tuple[str | None, str]]
    if isinstance(words, Mapping):
        items = [(c, w) for c, ws in words.items() for w in ws]
    else:
        items = [(None, w) for w in words]
    rows = []
    for c, w in items:
        ids = token_ids(model, " " + w)
        pieces = [model.tokenizer.decode([i]) for i in ids]
        row = {"category": c} if c is not None else {}
        row.update({"word": w, "n_tokens": len(ids), "tokens": "|".join(pieces), "multi_token": len(ids) > 1})
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- overlap


def _data_root(data_dir: str | os.PathLike | None) -> Path:
    if data_dir is not None:
        root: Path | None = Path(data_dir)
    else:
        root = project_data_dir()
    if root is None:
        raise DataDirError(
            "The benchmark data folder was not found, so the CommonWords overlap check cannot "
            "read the WinoBias, WinoGender, StereoSet and BBQ word lists (it needs the local "
            "files, not the Hub copies). Set GENDER_NEURONS_DATA to the shared data folder."
        )
    if not root.is_dir():
        raise DataDirError(f"Data folder {root} does not exist; set GENDER_NEURONS_DATA to the shared data folder.")
    return root


def _need(path: Path) -> Path:
    if not path.is_file():
        raise DataDirError(f"{path} is missing; the CommonWords overlap check needs it.")
    return path


def _clean(term: str) -> str:
    return re.sub(r"\s+", " ", term.strip().strip("'\".,").lower())


def reference_word_sets(data_dir: str | os.PathLike | None = None) -> dict[str, set[str]]:
    """Word lists of the prior bias datasets, lowercased, read from the data directory.

    Keys:

    * ``winobias_occupations``: ``male_occupations.txt``, ``female_occupations.txt`` and
      every bracketed occupation mention in the 8 sentence files (40 occupations).
    * ``winobias_gendered_words``: both columns of ``extra_gendered_words.txt`` and
      ``generalized_swaps.txt``.
    * ``winogender_occupations``: the occupations of ``templates.tsv`` and
      ``occupations-stats.tsv`` (60).
    * ``winogender_participants``: the other participants of ``templates.tsv`` (23) plus
      "someone".
    * ``stereoset_gender_targets``: the ``target`` of every ``bias_type == "gender"`` item.
    * ``stereoset_profession_targets``: the ``target`` of every ``bias_type == "profession"``
      item (StereoSet's occupation list; stricter than the gender domain alone).
    * ``bbq_gender_terms``: the names and group terms in ``answer_info`` of
      ``bbq/Gender_identity.jsonl`` (the "unknown" answers left out).

    Args:
        data_dir: the benchmark data directory; default ``analysis_lib.data.data_dir()``
            (``$GENDER_NEURONS_DATA``).
    """
    root = _data_root(data_dir)
    refs: dict[str, set[str]] = {}

    wb = root / "winobias"
    occ: set[str] = set()
    for name in ("male_occupations.txt", "female_occupations.txt"):
        occ |= {_clean(x) for x in _need(wb / name).read_text(encoding="utf-8").splitlines() if x.strip()}
    sentence_files = sorted(wb.glob("*_stereotyped_type*.txt.*"))
    if not sentence_files:
        raise DataDirError(f"No WinoBias sentence files in {wb}.")
    mention = re.compile(r"\[(?:the|a|an) ([^\]]+)\]", re.IGNORECASE)
    for f in sentence_files:
        for line in f.read_text(encoding="utf-8").splitlines():
            occ |= {_clean(m) for m in mention.findall(line)}
    refs["winobias_occupations"] = occ

    gendered: set[str] = set()
    for name in ("extra_gendered_words.txt", "generalized_swaps.txt"):
        for line in _need(wb / name).read_text(encoding="utf-8").splitlines():
            gendered |= {_clean(x) for x in line.split("\t") if x.strip()}
    refs["winobias_gendered_words"] = gendered - {""}

    wg = root / "winogender"
    with _need(wg / "templates.tsv").open(encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))[1:]
    with _need(wg / "occupations-stats.tsv").open(encoding="utf-8") as fh:
        stats = list(csv.reader(fh, delimiter="\t"))[1:]
    refs["winogender_occupations"] = {_clean(r[0]) for r in rows if r} | {_clean(r[0]) for r in stats if r}
    refs["winogender_participants"] = {_clean(r[1]) for r in rows if len(r) > 1} | {"someone"}

    ss = root / "stereoset"
    files = sorted(ss.glob("*.jsonl"))
    if not files:
        raise DataDirError(f"No StereoSet jsonl files in {ss}.")
    by_type: dict[str, set[str]] = {"gender": set(), "profession": set()}
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                d = json.loads(line)
                if d.get("bias_type") in by_type:
                    by_type[d["bias_type"]].add(_clean(d["target"]))
    refs["stereoset_gender_targets"] = by_type["gender"]
    refs["stereoset_profession_targets"] = by_type["profession"]

    bbq: set[str] = set()
    for line in _need(root / "bbq" / "Gender_identity.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            for term, group in json.loads(line)["answer_info"].values():
                if group != "unknown":
                    bbq.add(_clean(term))
    refs["bbq_gender_terms"] = bbq
    return refs


def word_variants(term: str) -> set[str]:
    """Simple inflection variants used for matching: the lowercased phrase plus its last word
    with a trailing ``s`` / ``es`` removed (and ``ies`` → ``y``), so "nurses" ~ "nurse" and
    "cooks" ~ "cook". Over-stripping ("glass" → "glas") only makes the check stricter."""
    t = _clean(term)
    head, _, last = t.rpartition(" ")
    prefix = head + " " if head else ""
    out = {t}
    if last.endswith("s") and len(last) > 2:
        out.add(prefix + last[:-1])
        if last.endswith("es"):
            out.add(prefix + last[:-2])
        if last.endswith("ies"):
            out.add(prefix + last[:-3] + "y")
    return out


def _tokens(term: str) -> set[str]:
    return {v for tok in _clean(term).replace("-", " ").split() for v in word_variants(tok)}


def find_overlaps(
    words_by_category: Mapping[str, Iterable[str]],
    reference_sets: Mapping[str, Iterable[str]],
) -> pd.DataFrame:
    """Every match between a curated word and a reference term, one row each.

    Columns: ``category``, ``word``, ``reference``, ``term``, ``match``. ``match`` is
    ``"exact"`` when the two phrases are equal up to case and a plural/3rd-person ``s``,
    and ``"token"`` when they only share a word (e.g. "chess" vs "chess player"); token
    matches are informational, exact ones are overlap.
    """
    rows = []
    prepared = {
        name: [(t, word_variants(t), _tokens(t)) for t in sorted({_clean(x) for x in terms})]
        for name, terms in reference_sets.items()
    }
    for category, words in words_by_category.items():
        for w in words:
            wv, wt = word_variants(w), _tokens(w)
            for name, terms in prepared.items():
                for t, tv, tt in terms:
                    if wv & tv:
                        rows.append((category, w, name, t, "exact"))
                    elif wt & tt:
                        rows.append((category, w, name, t, "token"))
    return pd.DataFrame(rows, columns=["category", "word", "reference", "term", "match"])


def overlap_report(
    words_by_category: Mapping[str, Iterable[str]] | None = None,
    reference_sets: Mapping[str, Iterable[str]] | None = None,
) -> pd.DataFrame:
    """Overlap counts of each category with each reference set (zeros included).

    Args:
        words_by_category: ``{category: words}``; default the curated CommonWords.
        reference_sets: ``{name: terms}``; default :func:`reference_word_sets`.

    Returns:
        One row per (category, reference set): ``n_words``, ``n_terms`` (size of the
        reference set), ``n_overlap`` (exact matches up to case and plural ``s``), the
        overlapping pairs as ``"word=term"`` text, and ``n_token_overlap`` / ``token_overlap``
        for words that only share a word with a multi-word term (informational).
    """
    words_by_category = load_words() if words_by_category is None else {c: list(w) for c, w in words_by_category.items()}
    reference_sets = reference_word_sets() if reference_sets is None else reference_sets
    hits = find_overlaps(words_by_category, reference_sets)
    rows = []
    for c, ws in words_by_category.items():
        for name, terms in reference_sets.items():
            h = hits[(hits["category"] == c) & (hits["reference"] == name)]
            ex, tk = h[h["match"] == "exact"], h[h["match"] == "token"]
            rows.append(
                {
                    "category": c,
                    "reference": name,
                    "n_words": len(ws),
                    "n_terms": len(set(terms)),
                    "n_overlap": int(ex["word"].nunique()),
                    "overlap": ", ".join(f"{w}={t}" for w, t in zip(ex["word"], ex["term"])),
                    "n_token_overlap": int(tk["word"].nunique()),
                    "token_overlap": ", ".join(f"{w}={t}" for w, t in zip(tk["word"], tk["term"])),
                }
            )
    return pd.DataFrame(rows)
