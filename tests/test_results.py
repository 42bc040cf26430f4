"""Chapter results: reproducible files, timings kept apart, atomic and staged writes."""

from __future__ import annotations

import json
import threading

import pandas as pd
import pytest

from analysis_lib import results as results_mod
from analysis_lib.errors import StudyError
from analysis_lib.results import Results


@pytest.fixture
def results_env(tmp_path, monkeypatch):
    monkeypatch.setenv(results_mod.RESULTS_ENV, str(tmp_path / "results"))
    monkeypatch.delenv(results_mod.STAGE_ENV, raising=False)
    return tmp_path / "results"


def test_add_time_goes_to_the_timing_file_only(results_env):
    r = Results("99_demo", {"seed": 0}, glue=False)
    r.add("answer", 42)
    assert r.add_time("attr_seconds", 12.3456) == pytest.approx(12.3456)
    r.save()
    saved = json.loads((results_env / "99_demo.json").read_text())
    assert saved["results"] == {"answer": 42}
    assert "attr_seconds" not in json.dumps(saved)
    assert json.loads((results_env / "99_demo.timing.json").read_text()) == {"attr_seconds": 12.346}


def test_wall_clock_columns_never_enter_a_table(results_env):
    r = Results("99_demo", glue=False)
    frame = pd.DataFrame({"task": ["a", "b"], "value": [0.5, 0.25], "seconds": [1.5, float("nan")],
                          "condition_seconds": [3.0, 3.0]})
    r.table("t", frame)
    r.save()
    back = pd.read_parquet(results_env / "99_demo__t.parquet")
    assert list(back.columns) == ["task", "value"]
    timing = json.loads((results_env / "99_demo.timing.json").read_text())
    assert timing == {"t.seconds": [1.5, None], "t.condition_seconds": [3.0, 3.0]}


def test_concurrent_table_writes_all_succeed(results_env):
    # a fixed ".name.tmp" made a quarter of concurrent writers fail
    frame = pd.DataFrame({"x": list(range(200))})
    errors = []

    def write():
        try:
            Results("99_demo", glue=False).table("same", frame)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert pd.read_parquet(results_env / "99_demo__same.parquet")["x"].tolist() == list(range(200))
    assert sorted(p.name for p in results_env.iterdir()) == ["99_demo__same.parquet"]


def test_staged_results_go_to_the_stage_folder(results_env, tmp_path, monkeypatch):
    stage = tmp_path / "stage"
    monkeypatch.setenv(results_mod.STAGE_ENV, str(stage))
    r = Results("99_demo", glue=False)
    r.add("x", 1)
    r.table("t", pd.DataFrame({"x": [1]}))
    r.save()
    assert sorted(p.name for p in stage.iterdir()) == ["99_demo.json", "99_demo__t.parquet"]
    assert list(results_env.glob("99_demo*")) == []


def test_results_path_that_is_a_file_is_a_clear_error(tmp_path, monkeypatch):
    bad = tmp_path / "results"
    bad.write_text("not a folder")
    monkeypatch.setenv(results_mod.RESULTS_ENV, str(bad))
    with pytest.raises(StudyError, match="is not a directory; point GENDER_NEURONS_RESULTS"):
        results_mod.results_dir()
