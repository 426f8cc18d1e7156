"""SQLAlchemy Core storage: SQLite (file or memory) and PostgreSQL."""

from __future__ import annotations

from pipestate.adapters.retry import RetrySettings
from pipestate.adapters.sqlalchemy.session import SQL_RETRY_SETTINGS
from pipestate.adapters.sqlalchemy.storage import SqlAlchemyStorage

__all__ = ["SQL_RETRY_SETTINGS", "RetrySettings", "SqlAlchemyStorage"]
