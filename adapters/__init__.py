"""Adapters: storage backends (SQLAlchemy, BigQuery) and the command line."""
