"""The model of BigQuery's limits (tests/support/bq_limits.py) does what the documentation says.

These tests hold the model itself; the adapter's behaviour under it is tested elsewhere.
"""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Iterator

import pytest
from google.api_core import exceptions as gexc
from google.cloud import bigquery

from tests.support.bq_emulator import BigQueryEmulator, shared_client
from tests.support.bq_limits import MB, LimitedClient, Limits, Statement


@pytest.fixture
def table(emulator: BigQueryEmulator) -> Iterator[str]:
    client = shared_client()
    dataset = f"lim_{uuid.uuid4().hex[:12]}"
    client.create_dataset(dataset)
    name = f"{client.project}.{dataset}.runs"
    client.query(f"CREATE TABLE `{name}` (run_id STRING, n INT64)").result()
    client.query(f"INSERT INTO `{name}` (run_id, n) VALUES ('a', 0), ('b', 0)").result()
    yield name
    client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)


def model(**overrides: object) -> LimitedClient:
    return LimitedClient(shared_client(), Limits(**overrides))  # type: ignore[arg-type]


def update(client: LimitedClient, table: str, run_id: str = "a") -> object:
    return client.query(f"UPDATE `{table}` SET n = n + 1 WHERE run_id = '{run_id}'")


def test_statements_are_classified_by_kind_target_and_tables() -> None:
    merge = Statement.parse(
        "MERGE `p.d.q` T USING (SELECT 1 AS id) S ON T.id = S.id WHEN NOT MATCHED THEN INSERT ROW"
    )
    assert (merge.kind, merge.target, merge.insert_only_merge, merge.conflicts) == (
        "MERGE",
        "p.d.q",
        True,
        False,
    )
    upsert = Statement.parse(
        "MERGE `p.d.q` T USING `p.d.s` S ON T.id = S.id WHEN MATCHED THEN UPDATE SET x = 1"
    )
    assert upsert.conflicts and upsert.referenced == ("p.d.q", "p.d.s")
    assert Statement.parse("WITH x AS (SELECT 1) SELECT * FROM x").kind == "SELECT"
    assert Statement.parse("DELETE FROM `p.d.q` WHERE TRUE").target == "p.d.q"


def test_the_twenty_third_outstanding_mutating_statement_fails_with_the_documented_error(table: str) -> None:
    client = model(dml_latency=200.0, time_scale=0.001)  # 0.2 s each: all 23 are outstanding together
    jobs = [update(client, table) for _ in range(23)]
    outcomes = []
    for job in jobs:
        try:
            job.result(timeout=30)  # type: ignore[attr-defined]
            outcomes.append("ok")
        except gexc.BadRequest as error:
            outcomes.append(str(error.errors[0]["reason"]) if error.errors else "?")
            assert "Too many DML statements outstanding against table" in error.message
            assert "limit is 20" in error.message
    assert outcomes.count("resourcesExceeded") == 1 and outcomes[-1] == "resourcesExceeded"
    assert client.peak_outstanding(table) == 22


def test_concurrent_updates_of_one_partition_are_rerun_then_fail_to_serialize(table: str) -> None:
    client = model(dml_latency=50.0, time_scale=0.001, conflict_reruns=0)
    jobs = [update(client, table, "a"), update(client, table, "b")]
    failures = []
    for job in jobs:
        try:
            job.result(timeout=30)  # type: ignore[attr-defined]
        except gexc.BadRequest as error:
            failures.append(error)
    (failure,) = failures  # whichever committed second lost; the other committed
    assert "Could not serialize access to table" in failure.message
    assert failure.errors[0]["reason"] == "invalidQuery"


def test_reruns_absorb_a_conflict_and_both_updates_commit(table: str) -> None:
    client = model(dml_latency=50.0, time_scale=0.001)
    jobs = [update(client, table, "a"), update(client, table, "a")]
    for job in jobs:
        job.result(timeout=30)  # type: ignore[attr-defined]
    assert sum(record.conflicts for record in client.jobs) >= 1
    (row,) = list(shared_client().query(f"SELECT n FROM `{table}` WHERE run_id = 'a'").result())
    assert row[0] == 2


def test_an_insert_only_merge_does_not_conflict_with_a_concurrent_update(table: str) -> None:
    client = model(dml_latency=50.0, time_scale=0.001, conflict_reruns=0)
    merge = client.query(
        f"MERGE `{table}` T USING (SELECT 'c' AS run_id, 0 AS n) S ON T.run_id = S.run_id "
        "WHEN NOT MATCHED THEN INSERT (run_id, n) VALUES (S.run_id, S.n)"
    )
    other = update(client, table, "a")
    merge.result(timeout=30)
    other.result(timeout=30)  # type: ignore[attr-defined]
    assert merge.dml_stats is not None and merge.dml_stats.inserted_row_count == 1
    assert all(record.conflicts == 0 for record in client.jobs)


def test_every_referenced_table_bills_at_least_ten_megabytes_and_history_is_billed(table: str) -> None:
    client = model(row_bytes=1000)
    small = client.query(f"SELECT * FROM `{table}`")
    small.result(timeout=30)
    assert small.total_bytes_billed == 10 * MB

    client.add_synthetic_rows(table, 1_000_000)
    big = client.query(f"SELECT * FROM `{table}`")
    big.result(timeout=30)
    assert big.total_bytes_billed == 1_000_002 * 1000


def test_a_job_over_its_byte_cap_fails_with_bytes_billed_limit_exceeded(table: str) -> None:
    client = model(row_bytes=1000)
    client.add_synthetic_rows(table, 100_000)
    config = bigquery.QueryJobConfig(maximum_bytes_billed=20 * MB)
    job = client.query(f"SELECT * FROM `{table}`", job_config=config)
    with pytest.raises(gexc.InternalServerError) as caught:
        job.result(timeout=30)
    assert caught.value.errors[0]["reason"] == "bytesBilledLimitExceeded"


def test_a_second_job_with_the_same_id_is_refused_like_jobs_insert(table: str) -> None:
    client = model()
    client.query("SELECT 1", job_id="fixed").result(timeout=30)
    with pytest.raises(gexc.Conflict, match="Already Exists: Job"):
        client.query("SELECT 1", job_id="fixed")
    assert client.get_job("fixed").state == "DONE"


def test_a_client_timeout_leaves_the_job_running_until_it_commits(table: str) -> None:
    client = model(dml_latency=300.0, time_scale=0.001)
    job = update(client, table)
    with pytest.raises(concurrent.futures.TimeoutError):
        job.result(timeout=0.01)  # type: ignore[attr-defined]
    job.result(timeout=30)  # type: ignore[attr-defined]
    (row,) = list(shared_client().query(f"SELECT n FROM `{table}` WHERE run_id = 'a'").result())
    assert row[0] == 1


def test_modelled_time_runs_faster_than_the_wall_clock(table: str) -> None:
    client = model(dml_latency=2.0, time_scale=0.001)
    update(client, table).result(timeout=30)  # type: ignore[attr-defined]
    (record,) = client.jobs
    assert record.finished is not None and record.finished - record.submitted >= 2.0
