"""The GoogleSQL gate (DESIGN rule 7): every SQL text the adapter sends passes ZetaSQL analysis
against ``schemas/*.json`` with the parameter types the adapter binds.

The emulator (DuckDB + sqlglot) accepts SQL that BigQuery rejects; ZetaSQL is BigQuery's own
analyser, run offline (PyPI ``zetasql``, WebAssembly). The catalogue is enumerated from the
adapter (``tests/support/bq_statements.py``) and checked on every emulator client of the suite.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from google.cloud import bigquery

from tests.support.backends import unavailable
from tests.support.bq_emulator import BigQueryEmulator
from tests.support.bq_statements import (
    RECORDER,
    UncataloguedStatement,
    catalogue,
    enumerate_statements,
)
from tests.support.zetasql_gate import Gate, GateUnavailable, gate

ENTRIES = sorted(catalogue().values(), key=lambda e: (sorted(e["operations"]), e["sql"]))


@pytest.fixture(scope="module")
def zetasql() -> Gate:
    try:
        return gate()
    except GateUnavailable as error:
        unavailable(f"ZetaSQL gate: {error}")
        raise


def _entry(fragment: str) -> dict[str, Any]:
    return next(e for e in ENTRIES if fragment in e["sql"])


def test_the_catalogue_is_exactly_what_the_adapter_sends(emulator: BigQueryEmulator) -> None:
    fresh = enumerate_statements(emulator.client())

    def keys(entries: list[dict[str, Any]]) -> set[str]:
        return {json.dumps([e["sql"], e["parameters"]], sort_keys=True) for e in entries}

    assert keys(fresh) == keys(ENTRIES), (
        "the adapter's SQL changed: run `.venv/bin/python -m tests.support.bq_statements`"
    )
    assert {op for e in fresh for op in e["operations"]} >= {
        "claim_queue_items",
        "create_schema",
        "find_runs",
        "insert_runs",
        "queue_stats",
        "transition_queue_item",
        "update_runs",
        "writer_lease",
    }


@pytest.mark.parametrize(
    "entry", ENTRIES, ids=[f"{'+'.join(e['operations'])}-{n}" for n, e in enumerate(ENTRIES)]
)
def test_every_statement_passes_zetasql(zetasql: Gate, entry: dict[str, Any]) -> None:
    assert zetasql.problem(entry["sql"], entry["parameters"]) is None


def test_the_gate_catches_a_reserved_word_alias(zetasql: Gate) -> None:
    stats = _entry("APPROX_QUANTILES")
    planted = stats["sql"].replace("AS ts", "AS at")
    assert planted != stats["sql"]

    problem = zetasql.problem(planted, stats["parameters"])

    assert problem is not None and "Unexpected keyword AT" in problem


def test_the_gate_catches_a_parameter_bound_with_the_wrong_type(zetasql: Gate) -> None:
    get_run = _entry("WHERE `run_id` = @id")
    wrong = copy.deepcopy(get_run["parameters"])
    wrong["id"] = {"type": "INT64"}

    problem = zetasql.problem(get_run["sql"], wrong)

    assert problem is not None and "STRING, INT64" in problem


def test_the_gate_catches_an_unknown_column(zetasql: Gate) -> None:
    get_run = _entry("WHERE `run_id` = @id")

    problem = zetasql.problem(
        get_run["sql"].replace("`run_id` = @id", "`run_ident` = @id"), get_run["parameters"]
    )

    assert problem is not None and "run_ident" in problem


def test_a_statement_missing_from_the_catalogue_fails_the_test_that_sends_it() -> None:
    config = bigquery.QueryJobConfig(labels={"app": "pipestate", "operation": "get_run"})

    with pytest.raises(UncataloguedStatement, match="not analysed"):
        RECORDER.see("SELECT created_at AS at FROM `p.d.x_meta_scheduled_runs`", config)
    RECORDER.see("SELECT 1", bigquery.QueryJobConfig())  # a test's own query: not the adapter's


def test_the_opt_in_dry_run_binds_every_statement_with_its_catalogued_types() -> None:
    from tests.support.real_bigquery import parameters

    for entry in ENTRIES:
        bound = {p.name: p.to_api_repr()["parameterType"] for p in parameters(entry["parameters"])}
        assert bound == entry["parameters"], entry["sql"]
