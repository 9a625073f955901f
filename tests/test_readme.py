"""The README's commands are the ones the install page and CI use, and the install command
brings every package the test suite imports."""

import ast
import re
import sys
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    table = dict(re.findall(r"^\| (install|test|quick demo) \| `([^`]+)` \|$", (ROOT / "README.md").read_text(), re.M))
    assert set(table) == {"install", "test", "quick demo"}
    return table


def test_install_page_and_ci_use_the_readme_commands():
    commands = _readme_commands()
    install_page = (ROOT / "doc" / "install.rst").read_text()
    assert commands["install"] in install_page and commands["test"] in install_page
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands["install"].replace("pip install", "python -m pip install -q", 1) in ci
    assert [line for line in ci if line and not line.startswith("#")][-1] == commands["test"]
    assert (ROOT / commands["quick demo"].split()[-1]).is_file()


def _requirement_names(requirements):
    return {re.split(r"[\s<>=!~\[;]", req, maxsplit=1)[0].lower().replace("_", "-") for req in requirements}


def _with_dependencies(names):
    """``names`` and everything they require (installed distributions only, extras left out)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        todo.extend(_requirement_names(r for r in requires if "extra ==" not in r))
    return seen


def test_tests_extra_covers_every_import_of_the_test_suite():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = _with_dependencies(_requirement_names(project["dependencies"] + project["optional-dependencies"]["tests"]))
    installed |= {"dask", "distributed"}  # dask[distributed] names the extra that brings distributed
    local = {p.stem for p in (ROOT / "examples" / "benchmarks").glob("*.py")} | {"sklearn_ugmm"}
    local |= {p.stem for p in (ROOT / "tests").glob("*.py")}  # tests may share helpers
    imported = set()
    for path in (ROOT / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - local
    providers = packages_distributions()
    missing = {
        module
        for module in third_party
        if not {d.lower().replace("_", "-") for d in providers.get(module, [module])} & installed
    }
    assert missing == set(), f"imported by the tests but not installed by the README's install command: {missing}"
