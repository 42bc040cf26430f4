# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# (ch-commonwords)=
# # CommonWords: a dataset of everyday words
#
# Paper 1 {cite}`yu2025understanding` measures gender bias on *CommonWords*, 500 everyday
# words in five categories, chosen so that they do not overlap with earlier bias datasets.
# A model that completes "The nurse is a" with *woman* far more often than with *man* has
# tied an occupation to a gender, and the paper asks the same question of traits, actions,
# hobbies and colours. The paper did not release its word lists, so this project curated its
# own. This chapter shows the words, the prompt templates, the check against earlier
# datasets, the train/test split and how the models tokenize the words. It then saves the
# dataset for the later chapters.
#
# ```{admonition} Re-run this chapter
# :class: tip
# `python -m analysis_lib run 01 --profile full` shows the tokenization for all three
# offline models; `-p model=gemma3-270m` uses another model's tokenizer for the examples.
# ```

# %% tags=["parameters", "hide-cell"]
model = "smollm2-135m-instruct"  # model name (see `python -m analysis_lib models`), a Hugging Face id or a local folder
device = "cpu"  # cpu, cuda (or cuda:N) or mps
dtype = "float32"  # weight dtype: float32, bfloat16 or float16
profile = "quick"  # size profile: quick, full or gpu (analysis_lib/profiles.yaml); fills every size left None
seed = 0  # random seed of every sample and draw
compare_models = None  # models whose tokenization of the words is shown (None: the profile's)
examples_per_category = 4  # example words shown per category

# %% tags=["remove-cell"]
from analysis_lib.pipeline import resolve_profile
globals().update(resolve_profile("01_commonwords", globals()))  # the sizes left None, from the profile

import datasets
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from IPython.display import display
from myst_nb import glue

from analysis_lib import commonwords as cw
from analysis_lib import checks, models, plots
from analysis_lib.results import Results, output_dir

torch.manual_seed(seed)
datasets.disable_progress_bars()
plots.setup()
results = Results("01_commonwords", dict(model=model, device=device, dtype=dtype, profile=profile, seed=seed,
                                         compare_models=compare_models,
                                         examples_per_category=examples_per_category))

# %% [markdown]
# ## Five categories of everyday words
#
# `analysis_lib.commonwords.load_commonwords` builds the dataset from frozen word files
# in the package (`analysis_lib/commonwords_data/`). Each category has its own prompt
# template. All five templates end in the same slot, so the next token can be *man* or
# *woman*.

# %%
ds = cw.load_commonwords(seed=seed)
categories = cw.category_table(ds)
categories.set_index("category")

# %% tags=["remove-cell"]
frame = cw.to_frame(ds)
results.add("n_words", len(frame))
results.add("n_categories", frame["category"].nunique())
results.add("words_per_category", int(frame.groupby("category").size().iloc[0]))
results.add("n_train", int((frame["split"] == "train").sum()))
results.add("n_test", int((frame["split"] == "test").sum()))
results.add("n_phrases", int(frame["word"].str.contains(" ").sum()))
results.add("n_phrases_colors", int(categories.set_index("category").loc["colors", "multi-word phrases"]))
results.add("n_phrases_hobbies", int(categories.set_index("category").loc["hobbies", "multi-word phrases"]))
results.table("categories", categories)

# %% [markdown]
# CommonWords holds {glue:text}`n_words` words: {glue:text}`words_per_category` in each of
# {glue:text}`n_categories` categories. Traits are personality adjectives ("kind",
# "aggressive"), actions are verbs in the third person ("cries", "shouts"), professions are
# occupation nouns, hobbies are pastimes and sports, and colours are colour names and shades.
# {glue:text}`n_phrases` entries are phrases of two words: {glue:text}`n_phrases_hobbies`
# hobbies ("rock climbing") and {glue:text}`n_phrases_colors` shades ("navy blue").
#
# The word files follow written curation rules (`commonwords_data/README.md`). Every word is
# common. No word is gendered by definition: no kinship terms, titles, *-man*/*-ess* forms
# or gendered adjectives. Words that are only *stereotyped* are kept on purpose ("nurturing",
# "boxing", "pink"), because they are what the probe measures. Every word of the five
# categories is listed below.

# %% tags=["hide-output"]
words = cw.load_words()
with pd.option_context("display.max_rows", 120):
    display(pd.DataFrame(words).rename_axis("#").rename(index=lambda i: i + 1))

# %% [markdown]
# ## The templates
#
# Each category's *noun template* is scored on the next token " man" against " woman". Its
# *pronoun template* is scored on " he" against " she", a check that the result does not
# hinge on one pair of target words. The professions template is the paper's own (its
# Figure 1: "The nurse is a" → "woman"). The other four follow the method notes and keep
# the same final slot.

# %%
templates = pd.DataFrame(cw.TEMPLATES).T.rename(columns={"noun": "noun template (→ man / woman)",
                                                        "pronoun": "pronoun template (→ he / she)"})
templates["example"] = frame.groupby("category", sort=False)["prompt"].first()
templates

# %% [markdown]
# ## No overlap with earlier bias datasets
#
# The paper chose words that do not appear in the existing benchmarks, so that CommonWords
# tests whether the bias reaches *ordinary* vocabulary. `commonwords.overlap_report` reads
# the word lists of those benchmarks from the checksummed data folder: the WinoBias and
# WinoGender occupations and participants, the WinoBias gendered-word lists, the StereoSet
# gender and profession targets, and the names and group terms of BBQ's Gender_identity
# answers. A word *overlaps* when it equals a reference term, ignoring case and a plural or
# third-person *s* ("nurses" = "nurse"). The goal is zero in every cell.

# %%
overlap = cw.overlap_report()
counts = overlap.pivot(index="reference", columns="category", values="n_overlap")
counts = counts[list(cw.CATEGORIES)]
counts.insert(0, "reference terms", overlap.groupby("reference")["n_terms"].first())
counts

# %% tags=["remove-cell"]
token_overlap = overlap[overlap["n_token_overlap"] > 0]
results.add("n_overlap", int(overlap["n_overlap"].sum()))
results.add("n_reference_sets", overlap["reference"].nunique())
results.add("n_reference_terms", int(overlap.groupby("reference")["n_terms"].first().sum()), fmt=",")
results.add("n_token_overlap", int(token_overlap["n_token_overlap"].sum()))
results.add("token_overlap_list", "; ".join(token_overlap["token_overlap"]) or "none")
results.table("overlap", overlap)

# %% [markdown]
# The {glue:text}`n_reference_sets` reference lists hold {glue:text}`n_reference_terms`
# terms. The exact overlap with CommonWords is {glue:text}`n_overlap` words. A looser check
# also flags a CommonWords entry that shares a single word with a multi-word reference term.
# It finds {glue:text}`n_token_overlap` such case(s): {glue:text}`token_overlap_list`. The
# hobby "chess" shares a word with the StereoSet profession target "chess player", but it
# names a game, not an occupation, so it stays.
#
# ## A seeded 80/20 split per category
#
# Later chapters choose neurons on one part of the words and measure the edited model on the
# other. `split_words` draws a permutation of each category from
# `numpy.random.default_rng([seed, category])`, so the split depends only on the seed and the
# category. With seed {glue:text}`split_seed` there are {glue:text}`n_train` training words and
# {glue:text}`n_test` test words, 80/20 in every category. A few test words per category:

# %%
test_examples = frame[frame["split"] == "test"].groupby("category", sort=False)["word"].apply(
    lambda w: ", ".join(w.head(5)))
pd.DataFrame({"train": frame[frame["split"] == "train"].groupby("category", sort=False).size(),
              "test": frame[frame["split"] == "test"].groupby("category", sort=False).size(),
              "test words (first 5)": test_examples})

# %% tags=["remove-cell"]
results.add("split_seed", seed)

# %% [markdown]
# ## How the models tokenize the words
#
# A word can be one token or several, and the count depends on the model's tokenizer. The
# table shows a few words of each category as they appear in a prompt, after a space (for
# each category, words that the default model keeps whole and words that it splits; `|`
# marks a token boundary). The quick profile shows only the default model; the full profile
# shows all three.

# %%
names = list(dict.fromkeys([model, *compare_models]))
tok_models = {name: models.load_model(name, device=device, dtype=dtype) for name in names}
tokenization = pd.concat(
    {name: cw.tokenization_table(m, words) for name, m in tok_models.items()}, names=["model"]
).reset_index(level=0).reset_index(drop=True)
default_tok = tokenization[tokenization["model"] == model]
examples = default_tok.groupby(["category", "multi_token"]).head(examples_per_category // 2)
shown = tokenization[tokenization["word"].isin(examples["word"])]
shown.pivot(index=["category", "word"], columns="model", values="tokens").loc[list(cw.CATEGORIES)]

# %% tags=["remove-cell"]
multi = tokenization.groupby(["model", "category"], sort=False)["multi_token"].mean().reset_index()
share_single = tokenization.groupby("model")["multi_token"].apply(lambda s: 1 - s.mean())
results.table("tokenization", tokenization)
results.add("share_single_token_default", float(share_single[model]), fmt=".0%")
results.add("n_single_token_default", int((~default_tok["multi_token"]).sum()))
results.add("max_tokens_default", int(default_tok["n_tokens"].max()))
results.add("share_single_token_by_model", "; ".join(f"{k}: {v:.0%}" for k, v in share_single.items()))
results.add("most_split_category_default",
            multi[multi["model"] == model].sort_values("multi_token").iloc[-1]["category"])

fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.2))
sns.barplot(data=multi, x="category", y="multi_token", hue="model", ax=axes[0])
plots.label(axes[0], "category", "share of words split\ninto several tokens", "Multi-token words")
axes[0].tick_params(axis="x", rotation=30)
axes[0].set_ylim(0, 1)
sns.countplot(data=tokenization, x="n_tokens", hue="model", ax=axes[1])
plots.label(axes[1], "tokens per word (after a space)", "number of words", "Tokens per word")
axes[1].get_legend().remove()
fig.tight_layout()
plots.glue_figure("fig_tokens", fig)

# %% [markdown]
# ```{glue:figure} fig_tokens
# :name: fig-cw-tokens
#
# Left: the share of each category's words that the tokenizer splits into two or more
# tokens. Right: how many tokens the 500 words take. One bar colour per model (the quick
# profile shows the default model only).
# ```
#
# For the default model {glue:text}`n_single_token_default` of the 500 words
# ({glue:text}`share_single_token_default`) are a single token, and the longest takes
# {glue:text}`max_tokens_default` tokens. {numref}`fig-cw-tokens` shows that the category
# split most often is {glue:text}`most_split_category_default`. The shares of single-token
# words by model are: {glue:text}`share_single_token_by_model`.
#
# ## Which position is read
#
# Bias is measured at the **last position** of the prompt, where the model predicts the next
# token. The neuron analysis of the later chapters also looks at the positions of the word
# itself. When a word is several tokens, the residual stream has read the whole word only
# at its **last sub-token**, so that is the word position used. `commonwords.word_positions`
# finds the word's tokens from the tokenizer's character offsets. Position 0 holds the start
# token (see {ref}`ch-model`).

# %%
default_lm = tok_models[model]
first_split_word = default_tok[default_tok["multi_token"]]["word"].iloc[0]
multi_row = frame[frame["word"] == first_split_word].iloc[0]
positions = cw.word_positions(default_lm, multi_row, "noun")
prompt_tokens = models.str_tokens(default_lm, multi_row["prompt"])
roles = ({0: "start token", len(prompt_tokens) - 1: "last position: the prediction"}
         | dict.fromkeys(positions[:-1], "word") | {positions[-1]: "word, last sub-token: read"})
pd.DataFrame({"token": [repr(t) for t in prompt_tokens],
              "role": [roles.get(i, "") for i in range(len(prompt_tokens))]}).rename_axis("position").T

# %% tags=["remove-cell"]
results.add("position_example_word", multi_row["word"])
results.add("position_example_prompt", multi_row["prompt"])
results.add("position_example_positions", ", ".join(str(p) for p in positions))
results.add("position_example_read", positions[-1])

# %% [markdown]
# In "{glue:text}`position_example_prompt`" the word *{glue:text}`position_example_word`*
# occupies positions {glue:text}`position_example_positions`; the word position read later
# is {glue:text}`position_example_read`.
#
# ## The published dataset
#
# The dataset is saved as a Hugging Face `DatasetDict` (`save_to_disk`) and as one Parquet
# file per split, so later chapters and other tools load exactly these words and this split.
# The columns are `word`, `category`, `template`, `pronoun_template`, `prompt`,
# `pronoun_prompt` and `split`.

# %%
saved = cw.save_commonwords(output_dir() / "commonwords", seed=seed)
sorted(p.relative_to(saved).as_posix() for p in saved.iterdir())

# %% [markdown]
# ## Exercises
#
# ```{exercise} One token or several?
# :label: ex-ch1-single-token
#
# *Difficulty: ★☆☆, about 10 minutes.*
#
# The bias score reads the probability of a *single* next token, so every target (" man",
# " woman", " he", " she") must be one token for the model in use. Write
# `is_single_token(model, text)` with `models.token_ids` (which encodes `text` without the
# start token) and check it with `checks.check_single_token(is_single_token, default_lm)`.
# Which of the four targets would fail for a model whose tokenizer had no " she" token, and
# what does the study do then?
#
# :::{admonition} Hint
# :class: dropdown
# `models.token_ids(model, text)` returns a list of ids: one token means a list of length one.
# Keep the leading space: " she" and "she" are different tokens.
# :::
# ```

# %% tags=["student", "remove-cell"]
def is_single_token(model, text):
    ...  # your code here


# %% [markdown] tags=["solution"]
# ```{solution-start} ex-ch1-single-token
# :class: dropdown
# ```
# Count the tokens of the text alone; the start token is not part of it:

# %% tags=["solution"]
def is_single_token(model, text):
    return len(models.token_ids(model, text)) == 1


checks.check_single_token(is_single_token, default_lm)
{t: is_single_token(default_lm, t) for t in [" man", " woman", " he", " she"]}

# %% [markdown] tags=["solution"]
# All four targets are single tokens for the default model. For a tokenizer without a
# " she" token the pronoun template cannot be scored by one next-token probability, and
# `commonwords.check_targets` stops with a `TokenizationError` that names the target rather
# than silently reading a sub-token.
# ```{solution-end}
# ```

# %% [markdown]
# ```{exercise} The overlap rule
# :label: ex-ch1-overlap
#
# *Difficulty: ★★☆, about 20 minutes.*
#
# Two terms *overlap* when they are equal after lower-casing and removing a final "s",
# "es" or "ies" (→ "y") from the last word. Write `same_word(word, term)` and check it with
# `checks.check_same_word(same_word)`. Then count, with your function, how many
# (profession, reference term) pairs overlap across all reference lists of
# `commonwords.reference_word_sets()`. Does it agree with the table above?
#
# :::{admonition} Hint
# :class: dropdown
# Build, for each side, the set of its variants (the lower-cased term, and the term with a
# final "s", "es" or "ies" → "y" taken off its last word) and ask whether the two sets
# intersect. `commonwords.reference_word_sets()` is a dict of lists: loop over its values.
# :::
# ```

# %% tags=["student", "remove-cell"]
def same_word(word, term):
    ...  # your code here


# %% [markdown] tags=["solution"]
# ```{solution-start} ex-ch1-overlap
# :class: dropdown
# ```

# %% tags=["solution"]
def same_word(word, term):
    def variants(t):
        t = t.lower().strip()
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

    return bool(variants(word) & variants(term))


checks.check_same_word(same_word)
reference_terms = cw.reference_word_sets()
n_pairs = sum(same_word(w, t) for w in words["professions"] for terms in reference_terms.values() for t in terms)
n_pairs, int(counts["professions"].sum())

# %% [markdown] tags=["solution"]
# Both counts are zero: no profession in CommonWords equals an occupation of WinoBias or
# WinoGender, a StereoSet target or a BBQ term, even up to plural forms. The rule deliberately
# ignores stems ("teacher" and "teach" do not overlap), which is why the chapter adds the
# looser shared-word check.
# ```{solution-end}
# ```

# %% tags=["remove-cell"]
results.add("saved_dir", "results/commonwords")
results.save()
