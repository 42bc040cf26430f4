"""One home per concept (issue 18): cheap static checks of analysis_lib's source, no model.

Each rule reads the package's files with ``ast`` so it cannot drift back unnoticed:
the gender targets are spelled in one module, sizes live only in ``profiles.yaml``, no module
uses another's private helper, imports sit at the top of their modules, and ``b(w)`` has one
model-level function.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import analysis_lib

PKG = Path(analysis_lib.__file__).resolve().parent
MODULES = {p.stem: p for p in sorted(PKG.glob("*.py"))}

#: Function-local package imports outside cli.py (exempt: its start-up time) that are allowed,
#: each with its reason in a comment on the import line.
MAX_LOCAL_IMPORTS = 10


def _tree(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}


def _in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    p = parents.get(node)
    while p is not None:
        if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return True
        p = parents.get(p)
    return False


def _package_imports(tree: ast.Module):
    """``from .x import ...`` / ``from analysis_lib.x import ...`` nodes (not docstring examples)."""
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and (n.level >= 1 or (n.module or "").startswith("analysis_lib")):
            yield n


def test_gender_targets_are_spelled_in_one_module():
    pattern = re.compile(r'" (man|woman)"')
    spelled = sorted(name for name, path in MODULES.items() if pattern.search(path.read_text()))
    assert spelled == ["commonwords"], f"the targets are spelled outside commonwords.GENDER_TARGETS: {spelled}"
    from analysis_lib import commonwords

    assert commonwords.GENDER_TARGETS == commonwords.TARGETS["noun"]


def test_no_size_preset_dict_in_python():
    """Size presets (``{"quick": {...}, "full": {...}}``) live in profiles.yaml only."""
    offenders = []
    for name in MODULES:
        for n in ast.walk(_tree(name)):
            if isinstance(n, ast.Dict):
                keys = {k.value for k in n.keys if isinstance(k, ast.Constant)}
                if {"quick", "full"} <= keys:
                    offenders.append(f"{name}.py:{n.lineno}")
    assert offenders == [], f"size presets written in Python: {offenders}; put them in profiles.yaml"


def test_suite_presets_come_from_profiles_yaml():
    from analysis_lib import benchmarks, capability, pipeline

    assert benchmarks.SUITE_PROFILES == pipeline.suite_presets("bias")
    assert capability.PROFILES == pipeline.suite_presets("capability")
    assert list(benchmarks.SUITE_PROFILES) == list(capability.PROFILES) == ["quick", "full"]


def test_no_private_helper_used_across_modules():
    offenders = []
    for name in MODULES:
        tree = _tree(name)
        modules = {}  # local alias -> analysis_lib module, for `alias._name`
        for n in _package_imports(tree):
            if n.module in (None, "analysis_lib"):
                modules.update({a.asname or a.name: a.name for a in n.names})
            offenders += [f"{name}.py:{n.lineno} imports {a.name}" for a in n.names
                          if a.name.startswith("_") or (a.asname or "").startswith("_")]
        for n in ast.walk(tree):
            if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in modules
                    and n.attr.startswith("_") and not n.attr.startswith("__")):
                offenders.append(f"{name}.py:{n.lineno} uses {n.value.id}.{n.attr}")
    assert offenders == [], offenders


def test_package_imports_sit_at_the_top_of_their_modules():
    local = []
    for name in MODULES:
        if name == "cli":
            continue
        tree = _tree(name)
        parents = _parents(tree)
        local += [f"{name}.py:{n.lineno}" for n in _package_imports(tree) if _in_function(n, parents)]
    assert len(local) <= MAX_LOCAL_IMPORTS, f"{len(local)} function-local package imports: {local}"
    for where in local:
        name, line = where.split(".py:")
        text = MODULES[name].read_text().splitlines()[int(line) - 1]
        assert "# local:" in text, f"{where}: a function-local import needs a one-line reason ('# local: ...')"


def test_b_is_computed_by_one_function():
    """``b(w)`` from a model: benchmarks.prompt_bias; the modules that need it call it."""
    from analysis_lib import benchmarks, circuits, edit_selection, neuron_editing

    for mod in (circuits, edit_selection, neuron_editing):
        assert "prompt_bias" in Path(mod.__file__).read_text(), mod.__name__
    assert "prompt_bias" in benchmarks.__all__
