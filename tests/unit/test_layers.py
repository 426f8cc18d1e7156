"""Dependencies point inward: domain imports nothing of ours or any driver; application no adapter."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = ("sqlalchemy", "google", "psycopg", "sqlite3", "duckdb", "bqemulator", "tenacity", "asyncio")
AMBIENT = ("datetime.now", "datetime.utcnow", "time.time", "uuid4", "os.environ", "logging.basicConfig")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", _sources("domain"), ids=lambda p: p.name)
def test_domain_imports_only_the_standard_library_and_its_own_pure_helpers(path: Path) -> None:
    bad = {name for name in _imports(path) if name.split(".")[0] in ("application", "adapters", *DRIVERS)}
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
        for name in _imports(path)
        if name.split(".")[0] in ("adapters", "sqlalchemy", "google", "psycopg")
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_layer_check_sees_every_module() -> None:
    assert len(_sources("domain")) >= 9 and len(_sources("application")) >= 6
