"""The GoogleSQL gate: analyse BigQuery statements with ZetaSQL against ``schemas/*.json``.

ZetaSQL is the analyser behind BigQuery's GoogleSQL dialect; the PyPI package ``zetasql`` runs
it offline as WebAssembly (``wasmtime``). A statement passes when ZetaSQL parses it and resolves
every table, column, function and query parameter with the types the adapter binds. That catches
what the emulator (DuckDB + sqlglot) lets through: reserved words used as names (``AS at``), type
errors, unknown functions.

It does not prove BigQuery accepts a statement: BigQuery adds product rules on top of ZetaSQL
(e.g. DML limits, partition filters) that only the opt-in real-BigQuery suite can show.

Compiling the 28 MB WebAssembly module takes ~40 s on two busy cores; wasmtime's on-disk cache
(``~/.cache/wasmtime``) brings later runs under a second.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from typing import Any, Final

from pipestate import schemas

GATE_DATASET: Final = "pipestate-gate.pst_gate"
"""The dataset the catalogue's ``{dataset}`` placeholder becomes during analysis."""

_COLUMN_KINDS: Final = {
    "STRING": "TYPE_STRING",
    "INTEGER": "TYPE_INT64",
    "INT64": "TYPE_INT64",
    "FLOAT": "TYPE_DOUBLE",
    "FLOAT64": "TYPE_DOUBLE",
    "BOOLEAN": "TYPE_BOOL",
    "BOOL": "TYPE_BOOL",
    "TIMESTAMP": "TYPE_TIMESTAMP",
}
_PARAMETER_KINDS: Final = {**_COLUMN_KINDS, "DATE": "TYPE_DATE", "DATETIME": "TYPE_DATETIME"}

_lock = threading.Lock()


class GateUnavailable(RuntimeError):
    """The ``zetasql`` package (or its WebAssembly runtime) cannot run here."""


def _enable_wasm_cache() -> None:
    """Turn on wasmtime's compilation cache for the zetasql module (a 40 s compile otherwise)."""
    import wasmtime
    import zetasql.core.wasm_client as wasm_client

    if getattr(wasm_client.Config, "_pipestate_cached", False):
        return

    def cached_config() -> wasmtime.Config:
        config = wasmtime.Config()
        config.cache = True
        return config

    cached_config._pipestate_cached = True  # type: ignore[attr-defined]
    wasm_client.Config = cached_config


def _type(parameter_type: Mapping[str, Any]) -> Any:
    """A BigQuery REST ``parameterType`` -> a ZetaSQL ``Type``."""
    from zetasql.api import TypeFactory
    from zetasql.types import TypeKind

    kind = parameter_type["type"]
    if kind == "ARRAY":
        return TypeFactory.create_array_type(_type(parameter_type["arrayType"]))
    if kind == "STRUCT":
        return TypeFactory.create_struct_type(
            [(field.get("name", ""), _type(field["type"])) for field in parameter_type["structTypes"]]
        )
    return TypeFactory.create_simple_type(getattr(TypeKind, _PARAMETER_KINDS[kind]))


class Gate:
    """One ZetaSQL catalog of the pipestate tables in :data:`GATE_DATASET`; thread-safe."""

    def __init__(self) -> None:
        try:
            _enable_wasm_cache()
            from zetasql.api import CatalogBuilder, TableBuilder
            from zetasql.types import (
                LanguageOptions,
                ProductMode,
                TypeKind,
                ZetaSQLBuiltinFunctionOptions,
            )
        except ImportError as error:  # pragma: no cover - environment problem
            raise GateUnavailable(f"zetasql is not installed: {error}") from error
        language = LanguageOptions.maximum_features()
        language.product_mode = ProductMode.PRODUCT_EXTERNAL
        self._language = language
        builder = CatalogBuilder("bigquery")
        for spec in (*schemas.load_bigquery(), *schemas.load_monitor()):
            table = TableBuilder(f"{GATE_DATASET}.{spec.table}")
            for field in spec.fields:
                table.add_column(field.name, getattr(TypeKind, _COLUMN_KINDS[field.type]))
            builder.add_table(table.build())
        self._catalog = builder.with_builtin_functions(
            ZetaSQLBuiltinFunctionOptions(language_options=language)
        ).build()

    def problem(self, sql: str, parameters: Mapping[str, Mapping[str, Any]]) -> str | None:
        """``None`` when ZetaSQL analyses ``sql`` cleanly with these parameter types, else its error.

        ``sql`` may use the catalogue's ``{dataset}`` placeholder.
        """
        from zetasql.api import Analyzer
        from zetasql.core.exceptions import ZetaSQLError
        from zetasql.types import AnalyzerOptions

        options = AnalyzerOptions(
            language_options=self._language,
            query_parameters=[
                AnalyzerOptions.QueryParameter(name=name, type=_type(t)) for name, t in parameters.items()
            ],
        )
        text = sql.replace("{dataset}", GATE_DATASET)
        with _lock:
            try:
                Analyzer(options, self._catalog).analyze_statement(text)
            except ZetaSQLError as error:
                return str(error)
        return None


@functools.cache
def gate() -> Gate:
    """The process's one gate (building it loads the WebAssembly module)."""
    return Gate()
