"""The whole book in the quick profile: every chapter through papermill, the strict build,
and a real headless Chromium reading every rendered page.

The book is built in a temporary directory (sources copied there), so the developer's own
``book/`` (usually the full profile) is left alone.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from analysis_lib import pipeline

pytestmark = pytest.mark.book


@pytest.fixture(scope="session")
def quick_book(tmp_path_factory):
    """Execute every chapter (quick profile) and render the book strictly; yields the root."""
    root = tmp_path_factory.mktemp("book-root")
    results = root / "results"
    old = os.environ.get("GENDER_NEURONS_RESULTS")
    os.environ["GENDER_NEURONS_RESULTS"] = str(results)
    try:
        html = pipeline.run_book("quick", root=root)
    finally:
        if old is None:
            os.environ.pop("GENDER_NEURONS_RESULTS", None)
        else:
            os.environ["GENDER_NEURONS_RESULTS"] = old
    assert html == root / "book" / "_build" / "html"
    yield root


def test_every_chapter_executed_without_error_outputs(quick_book):
    for c in pipeline.chapters():
        nb = quick_book / "book" / f"{c}.ipynb"
        assert nb.is_file(), c
        assert pipeline.error_outputs(nb) == [], c
        assert (quick_book / "results" / f"{c}.json").is_file(), c


def test_every_chapter_page_rendered(quick_book):
    html = quick_book / "book" / "_build" / "html"
    for c in pipeline.chapters():
        page = html / "book" / f"{c}.html"
        assert page.is_file(), c
        text = page.read_text()
        assert "Traceback (most recent call last)" not in text
        assert "injected-parameters" not in text  # papermill's cell is hidden
    status = (html / "book" / "execution_status.html").read_text()
    for c in pipeline.chapters():
        assert c in status


def test_chapter_zero_results_are_reproducible(quick_book, tmp_path, monkeypatch):
    monkeypatch.setenv("GENDER_NEURONS_RESULTS", str(tmp_path / "results"))
    pipeline.run_chapter("00_model_and_start_token", profile="quick", output_dir=tmp_path / "book")
    first = json.loads((quick_book / "results" / "00_model_and_start_token.json").read_text())
    second = json.loads((tmp_path / "results" / "00_model_and_start_token.json").read_text())
    assert first == second
    assert first["results"]["nurse_tokens"][0] == "<|im_start|>"


def test_exercises_render_and_student_edition_hides_solutions(quick_book, tmp_path):
    import nbformat

    html = quick_book / "book" / "_build" / "html" / "book"
    with_exercises = [c for c in pipeline.chapters() if "{exercise}" in (pipeline.notebooks_dir() / f"{c}.py").read_text()]
    assert "00_model_and_start_token" in with_exercises
    for c in with_exercises:
        page = (html / f"{c}.html").read_text()
        assert page.count('class="exercise admonition"') >= 2, f"{c} needs at least two exercises"
        assert 'class="solution dropdown admonition"' in page, f"{c} shows no solution"
    student = tmp_path / "student"
    pipeline.build_student_edition(student, source_book=quick_book / "book")
    for c in pipeline.chapters():
        nb = nbformat.read(student / "book" / f"{c}.ipynb", as_version=4)
        assert not any("solution" in cell.metadata.get("tags", []) for cell in nb.cells), c
        page = (student / "book" / "_build" / "html" / "book" / f"{c}.html").read_text()
        if c in with_exercises:
            assert page.count('class="exercise admonition"') >= 2, c
        assert "solution dropdown" not in page and "tag_solution" not in page, c
    assert "your code here" in (student / "book" / "_build" / "html" / "book" / "00_model_and_start_token.html").read_text()


# ----------------------------------------------------------------------------- browser


def _serve(directory: Path):
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, "Debian's chromium and chromium-driver are needed: run `make chromium`."
    os.environ["SE_OFFLINE"] = "true"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1600"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()



@pytest.mark.browser
def test_pages_load_cleanly_in_chromium(quick_book, browser):
    html = quick_book / "book" / "_build" / "html"
    server = _serve(html)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    pages = sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html") if "_static" not in p.parts)
    assert "book/00_model_and_start_token.html" in pages
    problems = []
    try:
        for page in pages:
            browser.get(f"{base}/{page}")
            browser.get_log("browser")  # drop entries of the previous page
            browser.refresh()
            # Offline by design: external resources (the MathJax CDN) cannot load here, and the
            # theme asks for a favicon the book does not ship; everything served locally must load.
            logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
                    and "favicon.ico" not in e["message"]
                    and not (e["message"].startswith("http") and not e["message"].startswith(base))]
            problems += [f"{page}: console error {e['message']}" for e in logs]
            broken = browser.execute_script(
                "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
            )
            problems += [f"{page}: image did not load {src}" for src in broken]
            body = browser.find_element("tag name", "body").text
            if "Traceback (most recent call last)" in body or browser.find_elements("css selector", ".output.error"):
                problems.append(f"{page}: shows an error output")
        assert problems == []
        # every chapter page shows at least one figure that loaded
        for c in pipeline.chapters():
            browser.get(f"{base}/book/{c}.html")
            n = browser.execute_script("return document.querySelectorAll('figure img, .cell_output img').length")
            assert n >= 1, f"{c} shows no figure"
    finally:
        server.shutdown()


@pytest.mark.browser
def test_search_finds_chapter_text(quick_book, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    html = quick_book / "book" / "_build" / "html"
    server = _serve(html)
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/search.html?q=nurse")
        WebDriverWait(browser, 30).until(
            lambda d: d.execute_script("return document.querySelectorAll('#search-results li').length") > 0
        )
        links = browser.execute_script(
            "return Array.from(document.querySelectorAll('#search-results li a')).map(a => a.href)"
        )
        assert any("00_model_and_start_token" in href for href in links), links
    finally:
        server.shutdown()
