"""Benchmark: the cost of bias scoring against plain batched forward passes (not a test).

    .venv/bin/python bench/bench_scoring.py                      # default model
    .venv/bin/python bench/bench_scoring.py --models smollm2-135m-instruct gemma3-270m \\
        qwen2.5-coder-0.5b-instruct --repeats 5

Two measurements per model, each the median of ``--repeats`` runs after one warm-up:

1. **CommonWords**: ``benchmarks.commonwords_bias`` on all 500 noun prompts (tokenizing,
   batching, reading the two target log-probs, building the table) against the plain
   forward passes of the Hugging Face decoder over the same pre-tokenized batches (same
   batch size, same length-sorted order, no unembedding), via
   ``benchmarks.commonwords_timing``. Target: ratio <= 2.
2. **Shared-context scoring** (BBQ): ``benchmarks.option_logprobs`` (context run once, the
   three options packed after it) against ``scoring.continuation_logprobs`` on the three
   (context, option) pairs, on ``--bbq-items`` seeded BBQ items.

Prints a Markdown table for ``bench/README.md``. The machine's load matters (other jobs on
shared cores slow both sides alike, but add noise): read the medians, not single runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from analysis_lib import benchmarks as bm  # noqa: E402
from analysis_lib import commonwords as cw  # noqa: E402
from analysis_lib import data, models, scoring  # noqa: E402


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_model(name: str, repeats: int, bbq_items: int) -> dict:
    model = models.load_model(name)
    frame = cw.commonwords_frame()
    n_tok = sum(len(models.token_ids(model, p)) + 1 for p in frame["prompt"])
    cost = bm.commonwords_timing(model, frame, repeats=repeats)
    t_score, t_plain = cost["scoring_s"], cost["plain_s"]
    prompts = frame["prompt"].tolist()

    b = data.load_bbq().to_pandas()
    b = b[(b.target_label >= 0)].iloc[bm._subsample(len(b), bbq_items, 0)]
    ctx = [bm.bbq_prompt(r) for r in b.to_dict("records")]
    opts = [[" " + r[f"ans{k}"] for k in range(3)] for r in b.to_dict("records")]
    flat_c = [c for c in ctx for _ in range(3)]
    flat_o = [o for os_ in opts for o in os_]
    t_packed = _median_time(lambda: bm.option_logprobs(model, ctx, opts), repeats)
    t_pairs = _median_time(lambda: scoring.continuation_logprobs(model, flat_c, flat_o), repeats)
    return {"model": name, "cw_prompts": len(prompts), "cw_tokens": n_tok, "cw_score_s": t_score,
            "cw_plain_s": t_plain, "cw_ratio": t_score / t_plain, "bbq_items": len(ctx),
            "bbq_packed_s": t_packed, "bbq_pairs_s": t_pairs, "bbq_speedup": t_pairs / t_packed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=[models.DEFAULT_MODEL])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bbq-items", type=int, default=48)
    args = ap.parse_args()
    rows = [bench_model(m, args.repeats, args.bbq_items) for m in args.models]
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}\n")
    print("| model | CommonWords: scoring (s) | plain forward (s) | ratio | BBQ items | packed (s) | pairs (s) | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| `{r['model']}` | {r['cw_score_s']:.2f} | {r['cw_plain_s']:.2f} | {r['cw_ratio']:.2f} | "
              f"{r['bbq_items']} | {r['bbq_packed_s']:.2f} | {r['bbq_pairs_s']:.2f} | {r['bbq_speedup']:.1f}x |")


if __name__ == "__main__":
    main()
