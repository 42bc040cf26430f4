"""A small Sphinx extension for the book: drop duplicated script tags.

When sphinxcontrib-bibtex makes Sphinx read the sources a second time, extensions that
add their scripts on ``env-before-read-docs`` (sphinx-thebe) add them twice, and the
second ``const THEBE_JS_URL`` is a console error in every browser. This keeps the first
copy of each script.
"""

from __future__ import annotations


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for js in context.get("script_files", []):
        name = getattr(js, "filename", js) or ""  # None and "" both mean an inline script
        key = (str(name), tuple(sorted((k, str(v)) for k, v in getattr(js, "attributes", {}).items())))
        if key in seen:
            continue
        seen.add(key)
        unique.append(js)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
