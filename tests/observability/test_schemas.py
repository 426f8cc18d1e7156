"""The monitor's tables agree: schemas/*.json (BigQuery), the SQLAlchemy tables and the dataclasses."""

from __future__ import annotations

import dataclasses

from pipestate.adapters.bigquery.alerts import ALERTS, SETTINGS, table_spec
from pipestate.adapters.sqlalchemy import alerts as sql
from pipestate.domain.alerts import Alert, MonitorSettings


def _json_fields(table: str) -> dict[str, bool]:
    spec = table_spec(table)
    assert spec["table"] == table and isinstance(spec["version"], int)
    return {f["name"]: f["mode"] != "REQUIRED" for f in spec["fields"]}


def test_settings_agree_everywhere() -> None:
    fields = _json_fields(SETTINGS)
    assert list(fields) == [c.name for c in sql.monitor_settings.columns]
    assert list(fields) == [f.name for f in dataclasses.fields(MonitorSettings)]
    for column in sql.monitor_settings.columns:
        assert fields[column.name] == (column.nullable and not column.primary_key), column.name


def test_alerts_agree_but_bigquery_keeps_a_claim_token() -> None:
    fields = _json_fields(ALERTS)
    assert fields.pop("claim_token") is True  # the BigQuery claim (no unique keys there)
    columns = {c.name: bool(c.nullable) and not c.primary_key for c in sql.alerts.columns}
    assert columns == fields
    assert set(fields) - {"alert_key", "details"} == {f.name for f in dataclasses.fields(Alert)} - {
        "key",
        "details",
    }
