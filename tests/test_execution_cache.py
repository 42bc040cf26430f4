"""The book's execution cache: unchanged chapters are reused, changed ones re-executed.

Two tiny chapters (a second or two each through papermill, no model) stand in for the book's:
``08_tiny`` writes a results JSON, a table and a timing; ``09_tiny`` reads ``08_tiny``'s
results, as chapters 5-7 read earlier chapters'. Everything runs for real: papermill, the
kernel, the store on disk; the package change is a modified copy of ``analysis_lib`` that
the subprocess imports.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from analysis_lib import execution_cache as ec
from analysis_lib import pipeline

TINY = '''\
    # %% [markdown]
    # # Tiny chapter
    #
    # The opening prose.

    # %% tags=["parameters"]
    model = "smollm2-135m-instruct"
    device = "cpu"
    dtype = "float32"
    profile = "quick"
    seed = 0

    # %%
    import pandas as pd
    from analysis_lib.results import Results
    r = Results("08_tiny", {"seed": seed}, glue=False)
    r.add("value", seed * 10)
    r.add_time("seconds_total", 1.0)
    r.table("t", pd.DataFrame({"seed": [seed]}))
    r.save()
    print("value", seed * 10)

    # %% [markdown]
    # The closing prose.
    '''

READER = '''\
    # %% tags=["parameters"]
    model = "smollm2-135m-instruct"
    device = "cpu"
    dtype = "float32"
    profile = "quick"
    seed = 0

    # %%
    import json
    from analysis_lib.results import Results, results_dir
    upstream = json.loads((results_dir() / "08_tiny.json").read_text())["results"]["value"]
    r = Results("09_tiny", {"seed": seed}, glue=False)
    r.add("upstream", upstream)
    r.save()
    '''


@pytest.fixture
def tiny_book(tmp_path, monkeypatch):
    """A chapter folder with 08_tiny and 09_tiny, an empty book folder and results folder."""
    src = tmp_path / "notebooks"
    src.mkdir()
    (src / "08_tiny.py").write_text(textwrap.dedent(TINY))
    (src / "09_tiny.py").write_text(textwrap.dedent(READER))
    monkeypatch.setenv(pipeline.NOTEBOOKS_ENV, str(src))
    monkeypatch.setenv("GENDER_NEURONS_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv(pipeline.BOOK_ENV, str(tmp_path / "book"))
    return tmp_path


def _update(capsys, **kw):
    done = pipeline.update_book_chapters("quick", **kw)
    out, err = capsys.readouterr()
    return {d.chapter: d for d in done}, out, err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.book
def test_unchanged_chapters_are_reused_and_a_prose_edit_keeps_their_outputs(tiny_book, capsys):
    book, results = tiny_book / "book", tiny_book / "results"
    done, out, _ = _update(capsys)
    assert [d.action for d in done.values()] == ["executed", "executed"]
    assert "08_tiny (1/2, quick profile): executing (reason: no cache entry)" in out
    assert "09_tiny: executed (reason: no cache entry)" in out
    executed, log = _snapshot(results), json.loads((book / pipeline.EXECUTION_LOG).read_text())
    executed_seconds = done["08_tiny"].seconds

    shutil.rmtree(results)  # a reuse republishes the stored results, byte for byte
    mtime = (book / "08_tiny.ipynb").stat().st_mtime_ns
    done, out, _ = _update(capsys)
    assert [d.action for d in done.values()] == ["reused", "reused"], out
    assert "08_tiny (1/2, quick profile): reused (inputs unchanged; executed " in out
    assert "execution cache: 2 chapter(s) reused, 0 executed" in out
    assert done["08_tiny"].seconds < executed_seconds  # no kernel was started
    assert _snapshot(results) == executed  # timing files included: the executed run's
    assert (book / "08_tiny.ipynb").stat().st_mtime_ns == mtime  # untouched: Sphinx keeps its page
    reused_log = json.loads((book / pipeline.EXECUTION_LOG).read_text())
    for c in ("08_tiny", "09_tiny"):
        assert reused_log[c]["status"] == "reused" and reused_log[c]["date"] == log[c]["date"]
        assert reused_log[c]["key"] == log[c]["key"]
    status = pipeline.write_execution_status(book).read_text()
    assert "| reused " in status and "(inputs unchanged)" in status and log["08_tiny"]["date"] in status

    # a prose-only edit: reused, with the new text among the executed outputs
    _edit(tiny_book / "notebooks" / "08_tiny.py", "The closing prose.", "The closing prose, rewritten.")
    done, out, _ = _update(capsys)
    assert done["08_tiny"].action == "reused" and done["09_tiny"].action == "reused", out
    nb = nbformat.read(book / "08_tiny.ipynb", as_version=4)
    assert nb.cells[-1].source == "The closing prose, rewritten."
    assert "Executed with the quick profile" in nb.cells[0].source  # re-tidied: the banner stays
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any("value 0" in o.get("text", "") for c in code for o in c.outputs)  # the outputs are kept
    assert [c for c in code if "injected-parameters" in c.metadata.get("tags", [])]
    assert _snapshot(results) == executed
    first = (book / "08_tiny.ipynb").read_bytes()
    _update(capsys)
    assert (book / "08_tiny.ipynb").read_bytes() == first  # the same prose spliced twice: the same bytes


@pytest.mark.book
def test_code_parameter_and_upstream_changes_re_execute_and_say_why(tiny_book, capsys):
    results = tiny_book / "results"
    _update(capsys)
    _edit(tiny_book / "notebooks" / "09_tiny.py", "r.save()", "r.save()  # saved")
    done, out, _ = _update(capsys)
    assert done["08_tiny"].action == "reused"
    assert done["09_tiny"].action == "executed" and done["09_tiny"].reason == "code of chapter changed", out
    # a code change that leaves 08_tiny's results as they were: 09_tiny, which reads them, is reused
    _edit(tiny_book / "notebooks" / "08_tiny.py", 'print("value", seed * 10)', 'print("value:", seed * 10)')
    done, out, _ = _update(capsys)
    assert (done["08_tiny"].action, done["09_tiny"].action) == ("executed", "reused"), out
    # one that changes them: 09_tiny is executed again
    _edit(tiny_book / "notebooks" / "08_tiny.py", 'r.add("value", seed * 10)', 'r.add("value", seed * 10 + 7)')
    done, out, _ = _update(capsys)
    assert done["09_tiny"].action == "executed" and done["09_tiny"].reason == "upstream results changed", out
    assert json.loads((results / "09_tiny.json").read_text())["results"]["upstream"] == 7
    done, out, _ = _update(capsys, parameters={"seed": 1})
    assert done["08_tiny"].reason == "parameters changed", out
    assert done["09_tiny"].reason == "parameters changed, upstream results changed", out
    assert json.loads((results / "09_tiny.json").read_text())["results"]["upstream"] == 17


@pytest.mark.book
def test_book_only_names_later_chapters_it_left_out_of_date(tiny_book, capsys):
    _update(capsys)
    _edit(tiny_book / "notebooks" / "08_tiny.py", 'r.add("value", seed * 10)', 'r.add("value", seed * 10 + 7)')
    done, out, err = _update(capsys, only=["08_tiny"])
    assert list(done) == ["08_tiny"] and done["08_tiny"].action == "executed", out
    assert "note: chapter 09_tiny in the book is out of date (upstream results changed)" in err, err
    assert "book --only 09_tiny" in err
    done, out, err = _update(capsys, only=["09_tiny"])
    assert done["09_tiny"].action == "executed" and done["09_tiny"].reason == "upstream results changed", out
    assert "out of date" not in err, err  # 08_tiny is current: nothing to say
    done, out, err = _update(capsys, only=["08_tiny"])
    assert done["08_tiny"].action == "reused" and "out of date" not in err, err


@pytest.mark.book
def test_a_damaged_entry_is_re_executed_with_a_notice(tiny_book, capsys):
    _update(capsys)
    entry = next((tiny_book / "book" / ec.CACHE_DIRNAME / "08_tiny").iterdir())
    table = entry / ec.RESULTS_FOLDER / "08_tiny__t.parquet"
    data = bytearray(table.read_bytes())
    data[len(data) // 2] ^= 0xFF
    table.write_bytes(bytes(data))
    done, out, err = _update(capsys)
    assert done["08_tiny"].action == "executed" and done["08_tiny"].reason == "cache entry damaged", out
    assert "the execution-cache entry of 08_tiny" in err and "results/08_tiny__t.parquet has sha256" in err
    assert done["09_tiny"].action == "reused"  # the re-execution gave the same results
    assert ec.entry_problems(entry, entry.name) == []  # stored again, whole
    (entry / ec.ENTRY_FILE).write_text("{not json")
    done, out, err = _update(capsys)
    assert done["08_tiny"].reason == "cache entry damaged" and "entry.json is missing or unreadable" in err


@pytest.mark.book
def test_a_changed_analysis_lib_re_executes_every_chapter_and_make_force_too(tiny_book, tmp_path):
    """The package the process and the kernels import is a copy with one changed comment
    (found first on PYTHONPATH), so its digest differs; then `make book FORCE=1` runs
    `book --force` (its render stops at the tiny chapters, which the table of contents lacks)."""
    from analysis_lib.data import ENV_VAR, data_dir

    env = {**os.environ, "PYTHONPATH": str(pipeline.repo_root()), "PYTHONHASHSEED": "0"}
    if data_dir() is not None:  # the copy below looks for ../shared/data beside itself
        env[ENV_VAR] = str(data_dir())
    update = [sys.executable, "-c", "from analysis_lib import pipeline; print('package', pipeline.__file__); "
              "pipeline.update_book_chapters('quick')"]
    run = functools.partial(subprocess.run, update, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    first = run(env=env)
    assert first.returncode == 0 and first.stdout.count("executed (reason: no cache entry)") == 2, first.stderr

    copy = tmp_path / "site"
    shutil.copytree(pipeline.repo_root() / "analysis_lib", copy / "analysis_lib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "analysis_lib" / "metrics.py", "a") as f:
        f.write("\n# a changed comment is a changed analysis_lib\n")
    changed = run(env={**env, "PYTHONPATH": str(copy)})
    assert changed.returncode == 0, changed.stderr
    assert f"package {copy / 'analysis_lib' / 'pipeline.py'}" in changed.stdout  # the copy was imported
    assert changed.stdout.count("executed (reason: analysis_lib changed)") == 2, changed.stdout

    venv = Path(sys.executable).parent.parent
    cmd = ["make", "-s", "-f", str(pipeline.repo_root() / "Makefile"), "book", "PROFILE=quick", "FORCE=1",
           f"VENV={venv}", "-o", f"{venv}/bin/.installed"]
    made = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert made.stdout.count("executed (reason: --force)") == 2, made.stdout + made.stderr


# ----------------------------------------------------------------------------- the key, by hand


def _nb(*cells):
    return new_notebook(cells=list(cells))


def test_the_key_covers_code_but_not_prose():
    a = _nb(new_markdown_cell("# Title"), new_code_cell("x = 1", metadata={"tags": ["parameters"]}))
    b = _nb(new_markdown_cell("# Another title"), new_code_cell("x = 1", metadata={"tags": ["parameters"]}))
    c = _nb(new_markdown_cell("# Title"), new_code_cell("x = 2", metadata={"tags": ["parameters"]}))
    assert ec.code_digest(a) == ec.code_digest(b) != ec.code_digest(c)
    assert ec.prose_digest(a) != ec.prose_digest(b) and ec.prose_digest(a) == ec.prose_digest(c)
    env = {"format": "1", "analysis_lib": "a", "data": "d", "models": "m", "packages": "p"}
    base = ec.chapter_inputs(a, {"seed": 0, "profile": "quick"}, env, {})
    assert ec.key_of(base) == ec.key_of(ec.chapter_inputs(b, {"profile": "quick", "seed": 0}, env, {}))
    other = ec.chapter_inputs(c, {"seed": 1, "profile": "quick"}, {**env, "analysis_lib": "b"}, {"x.json": "h"})
    assert ec.change_reason(base, other) == (
        "code of chapter changed, parameters changed, analysis_lib changed, upstream results changed")
    assert ec.change_reason(None, base) == "no cache entry"
    assert ec.change_reason(base, {**base, "packages": "q"}) == "package versions changed"


def test_upstream_files_are_the_earlier_chapters_results_without_timings(tmp_path):
    for name in ("01_a.json", "01_a.timing.json", "01_a__t.parquet", "edit_m.json", "03_c.json"):
        (tmp_path / name).write_text(name)
    log = {"01_a": {"outputs": ["01_a.json", "01_a.timing.json", "01_a__t.parquet"]},
           "02_b": {"outputs": ["edit_m.json"]}, "03_c": {"outputs": ["03_c.json"]}}
    order = ["01_a", "02_b", "03_c"]
    assert sorted(ec.upstream_files("03_c", order, log, tmp_path)) == ["01_a.json", "01_a__t.parquet", "edit_m.json"]
    assert ec.upstream_files("01_a", order, log, tmp_path) == {}
    assert sorted(ec.upstream_files("02_b", order, {"01_a": {}}, tmp_path)) == ["01_a.json", "01_a__t.parquet"]
    (tmp_path / "edit_m.json").unlink()
    assert ec.upstream_files("03_c", order, log, tmp_path)["edit_m.json"] == "missing"


def test_package_digest_sees_every_file_but_bytecode(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "profiles.yaml").write_text("quick: {}\n")
    first = ec.package_digest(pkg)
    (pkg / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert ec.package_digest(pkg) == first
    (pkg / "profiles.yaml").write_text("quick: {seed: 1}\n")
    assert ec.package_digest(pkg) != first


def test_splice_prose_keeps_outputs_and_refuses_other_code():
    source = _nb(new_markdown_cell("# T\n\nnew"), new_code_cell("p = 1", metadata={"tags": ["parameters"]}),
                 new_markdown_cell("middle"), new_code_cell("print(p)"), new_markdown_cell("added"))
    executed = _nb(new_markdown_cell("# T\n\nold"), new_code_cell("p = 1", metadata={"tags": ["parameters"]}),
                   new_code_cell("p = 2", metadata={"tags": ["injected-parameters"]}),
                   new_markdown_cell("middle"),
                   new_code_cell("print(p)", outputs=[new_output("stream", name="stdout", text="2\n")]))
    nb = ec.splice_prose(executed, source, "x")
    assert [c.source for c in nb.cells] == ["# T\n\nnew", "p = 1", "p = 2", "middle", "print(p)", "added"]
    assert nb.cells[4].outputs[0]["text"] == "2\n"
    assert nb.cells[0]["id"] == executed.cells[0]["id"] and nb.cells[3]["id"] == executed.cells[3]["id"]
    assert nb.cells[5]["id"] == ec.splice_prose(executed, source, "x").cells[5]["id"]  # stable
    with pytest.raises(ValueError, match="code cells differ"):
        ec.splice_prose(executed, _nb(new_code_cell("p = 1"), new_code_cell("print(p + 1)")), "x")
