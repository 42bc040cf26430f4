"""CommonWords: the curated files, the overlap check, the split, templates and token positions.

Real files, the real default model (SmolLM2, loads in about a second), no mocks.
"""

from __future__ import annotations

import pytest

from analysis_lib import commonwords as cw
from analysis_lib.errors import TokenizationError
from analysis_lib.models import encode, load_model


@pytest.fixture(scope="module")
def model():
    return load_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def words():
    return cw.load_words()


@pytest.fixture(scope="module")
def refs():
    return cw.reference_word_sets()


@pytest.fixture(scope="module")
def ds():
    return cw.load_commonwords(seed=0)


# ----------------------------------------------------------------------------- the files


def test_500_unique_words_100_per_category(words):
    assert tuple(words) == cw.CATEGORIES
    assert all(len(ws) == 100 for ws in words.values())
    flat = [w.lower() for ws in words.values() for w in ws]
    assert len(flat) == 500 and len(set(flat)) == 500  # no duplicate within or across categories
    for ws in words.values():
        assert all(w == w.strip() and w and "  " not in w for w in ws)


def test_files_have_a_source_note():
    for c in cw.CATEGORIES:
        first = cw.word_file(c).read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# source: ") and len(cw.source_note(c)) > 20
    assert (cw.DATA_DIR / "README.md").is_file()


def test_no_gendered_words(words, refs):
    gendered = set(cw.GENDERED_TERMS) | refs["winobias_gendered_words"]
    hits = [
        (c, w)
        for c, ws in words.items()
        for w in ws
        if cw._tokens(w) & gendered or any(v in gendered for v in cw.word_variants(w))
    ]
    assert hits == []
    # gendered compounds that the explicit list might miss
    suffixes = ("man", "men", "woman", "women", "boy", "girl", "wife", "ess", "esses", "ette")
    not_gendered = ("less", "ness", "chess")  # -less/-ness adjectives and nouns, a game
    odd = [
        w
        for ws in words.values()
        for w in ws
        for t in w.lower().replace("-", " ").split()
        if t.endswith(suffixes) and not t.endswith(not_gendered)
    ]
    assert odd == []


def test_gendered_check_catches_gendered_words(refs):
    """The check itself works: known gendered words are flagged."""
    for w in ("actress", "king", "masculine", "fireman", "waitresses", "feminine"):
        assert cw.word_variants(w) & (set(cw.GENDERED_TERMS) | refs["winobias_gendered_words"]), w


# ----------------------------------------------------------------------------- overlap


def test_reference_sets_are_read(refs):
    assert {"nurse", "carpenter", "secretary", "construction worker", "ceo"} <= refs["winobias_occupations"]
    assert len(refs["winobias_occupations"]) == 40
    assert len(refs["winogender_occupations"]) == 60 and "pharmacist" in refs["winogender_occupations"]
    assert "patient" in refs["winogender_participants"]
    assert {"schoolgirl", "mother", "himself"} <= refs["stereoset_gender_targets"]
    assert "chess player" in refs["stereoset_profession_targets"]
    assert {"karen", "man", "trans woman"} <= refs["bbq_gender_terms"]
    assert not any("unknown" in t or "not enough" in t for t in refs["bbq_gender_terms"])


def test_overlap_with_prior_datasets_is_zero(words, refs):
    report = cw.overlap_report(words, refs)
    assert len(report) == len(cw.CATEGORIES) * len(refs)
    assert report["n_overlap"].sum() == 0, report[report["n_overlap"] > 0][["category", "reference", "overlap"]]
    # the only word that shares a word with a multi-word reference term (documented in README)
    tok = report[report["n_token_overlap"] > 0]
    assert list(tok["token_overlap"]) == ["chess=chess player"]


def test_overlap_report_counts_plurals_and_third_person(refs):
    words = {"professions": ["nurses", "Pharmacist", "dentist"], "actions": ["cooks", "argues"]}
    report = cw.overlap_report(words, refs)
    assert report["n_overlap"].sum() > 0
    hits = cw.find_overlaps(words, refs)
    exact = hits[hits["match"] == "exact"]
    assert set(exact["word"]) == {"nurses", "Pharmacist", "cooks"}
    assert ("cooks", "cook") in set(zip(exact["word"], exact["term"]))
    wg = report.set_index(["category", "reference"]).loc[("professions", "winogender_occupations")]
    assert wg["n_overlap"] == 2 and "nurses=nurse" in wg["overlap"]


# ----------------------------------------------------------------------------- dataset and split


def test_dataset_fields_and_prompts(ds):
    assert set(ds) == {"train", "test"}
    for field in ("word", "category", "template", "prompt", "pronoun_prompt", "split"):
        assert field in ds["train"].column_names
    row = ds["train"][0]
    assert row["prompt"] == row["template"].format(word=row["word"])
    df = cw.to_frame(ds)
    assert len(df) == 500 and df["word"].is_unique
    for c in cw.CATEGORIES:
        sub = df[df["category"] == c]
        assert sub["prompt"].str.endswith(" is a").all()
        assert sub["pronoun_prompt"].str.endswith(" said that").all()
        assert all(w in p for w, p in zip(sub["word"], sub["prompt"]))
    assert "The dentist is a" in set(df["prompt"])


def test_split_is_80_20_per_category(ds):
    assert (len(ds["train"]), len(ds["test"])) == (400, 100)
    assert set(ds["train"]["split"]) == {"train"} and set(ds["test"]["split"]) == {"test"}
    table = cw.category_table(ds).set_index("category")
    assert (table["train"] == 80).all() and (table["test"] == 20).all() and (table["words"] == 100).all()


def test_split_is_deterministic_per_seed(ds):
    again = cw.load_commonwords(seed=0)
    assert again["test"]["word"] == ds["test"]["word"]
    other = cw.build_commonwords(seed=1)
    assert set(other["test"]["word"]) != set(ds["test"]["word"])
    assert len(other["test"]) == 100


def test_save_and_reload(tmp_path, ds):
    out = cw.save_commonwords(tmp_path / "cw", seed=0)
    assert (out / "train.parquet").is_file() and (out / "test.parquet").is_file()
    back = cw.load_commonwords(path=out)
    assert back["test"]["word"] == ds["test"]["word"] and back["train"]["prompt"] == ds["train"]["prompt"]
    import pandas as pd

    assert list(pd.read_parquet(out / "test.parquet")["word"]) == ds["test"]["word"]


# ----------------------------------------------------------------------------- tokens


def test_targets_are_single_tokens_for_smollm2(model):
    ids = cw.check_targets(model)
    assert set(ids) == set(cw.TARGETS)
    for kind, (m, f) in ids.items():
        assert m != f
        assert model.tokenizer.decode([m]) == cw.TARGETS[kind][0]
        assert model.tokenizer.decode([f]) == cw.TARGETS[kind][1]


def test_multi_token_target_raises(model):
    with pytest.raises(TokenizationError, match="single token"):
        cw.check_targets(model, {"noun": (" man", " chairperson-of-the-board")})


def test_word_positions_point_at_the_word(model, ds):
    for split in ds.values():
        for row in split:
            for kind, field in cw.PROMPT_FIELDS.items():
                pos = cw.word_positions(model, row, kind)
                ids = encode(model, row[field]).tokens[0].tolist()
                assert pos == list(range(pos[0], pos[-1] + 1)) and pos[0] >= 1  # after the start token
                assert ids[0] == model.start_token_id
                assert model.tokenizer.decode([ids[p] for p in pos]).strip() == row["word"]
                last_piece = model.tokenizer.decode([ids[pos[-1]]]).strip()
                assert last_piece and row["word"].endswith(last_piece)  # the word's last sub-token
                assert pos[-1] < len(ids) - 1  # the template continues after the word


def test_with_word_positions_and_tokenization_table(model, ds):
    small = ds["test"].select(range(10))
    out = cw.with_word_positions(small, model)
    row = out[0]
    assert row["word_last_pos"] == row["word_positions"][-1]
    assert row["n_tokens"] == len(encode(model, row["prompt"]).tokens[0])
    table = cw.tokenization_table(model)
    assert len(table) == 500
    # in-context token counts agree with the positions found in the prompts
    counts = dict(zip(table["word"], table["n_tokens"]))
    for r in out:
        assert len(r["word_positions"]) == counts[r["word"]]
    assert table.loc[table["word"] == "kind", "n_tokens"].item() == 1
    assert table["multi_token"].sum() > 0  # multi-token words are kept


def test_no_word_splits_into_a_gendered_piece(model):
    table = cw.tokenization_table(model)
    pieces = [(w, p) for w, t in zip(table["word"], table["tokens"]) for p in t.split("|")]
    assert [(w, p) for w, p in pieces if p.strip().lower() in cw.GENDERED_TERMS] == []


def test_missing_data_folder_is_a_clear_error(tmp_path):
    from analysis_lib.errors import DataDirError

    with pytest.raises(DataDirError, match="missing"):
        cw.reference_word_sets(tmp_path)
    with pytest.raises(DataDirError, match="does not exist"):
        cw.reference_word_sets(tmp_path / "nope")
