"""SQLAlchemy Core storage: SQLite (file or memory) and PostgreSQL."""

from __future__ import annotations

from pipestate.adapters.sqlalchemy.storage import SqlAlchemyStorage

__all__ = ["SqlAlchemyStorage"]
