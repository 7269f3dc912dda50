"""The rollback core: snapshot, verify and restore a Flask + Postgres app. Imports neither Celery nor Flask."""

__version__ = "0.1.0"
