"""Dependencies point inward: domain imports nothing of ours or any driver; application no adapter.

And there is one import root: every module imports pipestate's layers as ``pipestate.<layer>``
(or relatively), never as a bare top-level ``domain``/``application``/``adapters``/``schemas``,
which would collide with a host project's own packages of those names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("domain", "application", "adapters", "schemas")
DRIVERS = ("sqlalchemy", "google", "psycopg", "sqlite3", "duckdb", "bqemulator", "tenacity", "asyncio")
AMBIENT = ("datetime.now", "datetime.utcnow", "time.time", "uuid4", "os.environ", "logging.basicConfig")
SOURCE_FOLDERS = (*LAYERS, "pipestate", "tests", "bench", "examples")


def _absolute_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _layer_imports(path: Path) -> set[str]:
    """Imported modules, with our root stripped: ``pipestate.domain.run`` -> ``pipestate.domain.run``."""
    return {name.removeprefix("pipestate.") for name in _absolute_imports(path)}


def _sources(folder: str) -> list[Path]:
    # The real folders at the root, not pipestate/'s symlinks to them (rglob does not follow them).
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _sources("domain"), ids=lambda p: p.name)
def test_domain_imports_only_the_standard_library_and_its_own_pure_helpers(path: Path) -> None:
    bad = {
        name for name in _layer_imports(path) if name.split(".")[0] in ("application", "adapters", *DRIVERS)
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _sources("domain"), ids=lambda p: p.name)
def test_domain_reads_no_clock_environment_or_randomness(path: Path) -> None:
    source = path.read_text()
    found = [call for call in AMBIENT if call + "(" in source or call + "[" in source]
    assert not found, f"{path.name} uses {found}"


@pytest.mark.parametrize("path", _sources("application"), ids=lambda p: p.name)
def test_application_never_imports_adapters_or_drivers(path: Path) -> None:
    bad = {
        name
        for name in _layer_imports(path)
        if name.split(".")[0] in ("adapters", "sqlalchemy", "google", "psycopg")
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


ALL_SOURCES = [path for folder in SOURCE_FOLDERS for path in _sources(folder)]


@pytest.mark.parametrize("path", ALL_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_imports_our_layers_through_the_one_root(path: Path) -> None:
    bare = sorted(name for name in _absolute_imports(path) if name.split(".")[0] in LAYERS)
    assert not bare, f"{path.relative_to(ROOT)} imports {bare}: use 'pipestate.<layer>' instead"


def test_the_bare_import_check_would_catch_one() -> None:
    planted = ROOT / "tests" / "unit" / "_planted_bare_import.py"
    try:
        planted.write_text("from domain.run import PipelineRun\nimport adapters.rows\n")
        assert _absolute_imports(planted) & {"domain.run", "adapters.rows"} == {"domain.run", "adapters.rows"}
    finally:
        planted.unlink()


def test_pipestate_links_each_layer_to_its_root_folder() -> None:
    for layer in LAYERS:
        link = ROOT / "pipestate" / layer
        assert link.is_symlink() and link.resolve() == (ROOT / layer).resolve()


def test_the_layer_check_sees_every_module() -> None:
    assert len(_sources("domain")) >= 9 and len(_sources("application")) >= 6
    assert len(ALL_SOURCES) >= 80
