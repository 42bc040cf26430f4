"""Benchmark: exact neuron attribution against the forward pass and the dense reference (not a test).

    .venv/bin/python bench/bench_attribution.py                         # 1 and 2 threads
    .venv/bin/python bench/bench_attribution.py --threads 2 --dense 2 --dataset 400

Per thread count, for each prompt (median of ``--repeats`` runs after a warm-up):

* ``fwd+cache``: ``model.run_with_cache(tokens)`` (the prompt's forward pass with a full cache);
* ``attribute``: :func:`analysis_lib.attribution.attribute` with exact top-50 and bottom-50
  FFN value and attention value neurons (certified), split into its own forward pass
  (``fwd``, a filtered cache) and the scoring (``score``);
* ``dense``: the dense reference the tests use (:func:`analysis_lib.reference.dense_attribution`:
  every neuron read out through the full vocabulary, chunked) on the first ``--dense`` prompts.

Ratios: ``score / fwd+cache`` (target <= 1.5) and ``dense / attribute`` (target >= 250; the
dense reference's own forward pass is included on its side, as the fast path's is on its).
With ``--dataset N`` it also times :func:`dataset_attribution` on N CommonWords prompts
(targets: the more probable of " man" / " woman", method_spec §6 A1).

Prints Markdown tables for ``bench/README.md``. Other jobs on shared cores slow both sides but
add noise: read medians, and the load average printed with them.
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

from analysis_lib import attribution as at  # noqa: E402
from analysis_lib import models  # noqa: E402
from analysis_lib.reference import dense_attribution  # noqa: E402

PROMPTS = [
    ("The nurse is a", " woman"),
    ("The capital of France is", " Paris"),
    ("The person who enjoys knitting is a", " woman"),
    ("After a long day at the hospital, the surgeon said that", " he"),
    ("The person whose favorite color is pink is a", " woman"),
    ("3+5=", "8"),
]


def _median(fn, repeats: int):
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = fn()
        out.append((time.perf_counter() - t0, r))
    out.sort(key=lambda x: x[0])
    return out[len(out) // 2]


def bench_threads(model, threads: int, repeats: int, n_dense: int) -> list[dict]:
    rows = []
    with at.torch_threads(threads):
        for i, (prompt, target) in enumerate(PROMPTS):
            enc = models.encode(model, prompt)

            def fwd():
                with torch.inference_mode():
                    return model.run_with_cache(enc.tokens)

            t_fwd, _ = _median(fwd, repeats)

            def fast():
                return at.attribute(model, prompt, target, top_k=50, bottom_k=50,
                                    kinds=("ffn_value", "attn_value"), threads=None)

            t_fast, res = _median(fast, repeats)
            row = {
                "threads": threads, "prompt": prompt, "T": len(res.tokens), "fwd_cache": t_fwd,
                "att_fwd": res.seconds["forward"], "att_score": res.seconds["scoring"], "att_total": t_fast,
                "exact": res.stats["exact_rescored"], "dense": None,
            }
            if i < n_dense:
                t0 = time.perf_counter()
                dense_attribution(model, [(prompt, target)])
                row["dense"] = time.perf_counter() - t0
            rows.append(row)
            print(f"  [{threads} thr] {prompt!r}: fwd+cache {t_fwd:.3f}s attribute {t_fast:.3f}s"
                  + (f" dense {row['dense']:.1f}s" if row["dense"] else ""), flush=True)
    return rows


def bench_dataset(model, n: int, threads: int) -> dict:
    from analysis_lib import commonwords as cw
    from analysis_lib.scoring import next_token_logprobs

    frame = cw.commonwords_frame()
    frame = frame[frame.split == "train"].head(n)
    prompts = frame.prompt.tolist()
    ids = [models.single_token_id(model, " man"), models.single_token_id(model, " woman")]
    lp = next_token_logprobs(model, prompts, ids)
    targets = [" man" if a >= b else " woman" for a, b in lp.tolist()]
    words = [cw.word_positions(model, r) for r in frame.to_dict("records")]
    t0 = time.perf_counter()
    ds = at.dataset_attribution(model, prompts, targets, top_k=50, words=words, progress=True, threads=threads)
    total = time.perf_counter() - t0
    return {"n": len(prompts), "threads": threads, "total": total, **{f"s_{k}": v for k, v in ds.seconds.items()},
            "stats": ds.stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dense", type=int, default=1, help="prompts on which to time the dense reference")
    ap.add_argument("--dataset", type=int, default=0, help="CommonWords prompts for the dataset-level timing")
    args = ap.parse_args()
    model = models.load_model(args.model)
    at.vocab_extrema(model, progress=True)  # once per model, cached on disk
    rows = []
    for th in [int(x) for x in args.threads.split(",")]:
        rows += bench_threads(model, th, args.repeats, args.dense)
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, model `{args.model}`, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| threads | prompt | T | fwd+cache (s) | attribute: fwd (s) | score (s) | total (s) | score / fwd+cache "
          "| total / fwd+cache | exact rescored | dense (s) | dense / attribute |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        dense = f"{r['dense']:.1f}" if r["dense"] else ""
        speed = f"{r['dense'] / r['att_total']:.0f}x" if r["dense"] else ""
        print(f"| {r['threads']} | {r['prompt'][:40]} | {r['T']} | {r['fwd_cache']:.3f} | {r['att_fwd']:.3f} | "
              f"{r['att_score']:.3f} | {r['att_total']:.3f} | {r['att_score'] / r['fwd_cache']:.2f} | "
              f"{r['att_total'] / r['fwd_cache']:.2f} | {r['exact']} | {dense} | {speed} |")
    for th in sorted({r["threads"] for r in rows}):
        sub = [r for r in rows if r["threads"] == th]
        print(f"\nthreads={th}: median score/fwd+cache {statistics.median(r['att_score'] / r['fwd_cache'] for r in sub):.2f}, "
              f"median total/fwd+cache {statistics.median(r['att_total'] / r['fwd_cache'] for r in sub):.2f}, "
              f"median attribute {statistics.median(r['att_total'] for r in sub):.3f}s")
    if args.dataset:
        th = int(args.threads.split(",")[-1])
        d = bench_dataset(model, args.dataset, th)
        print(f"\ndataset_attribution: {d['n']} prompts, {th} threads: {d['total']:.1f}s "
              f"(per-prompt pass {d['s_per_prompt']:.1f}s, certification {d['s_certify']:.1f}s); {d['stats']}")


if __name__ == "__main__":
    main()
