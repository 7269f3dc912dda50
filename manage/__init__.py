"""Operator command line (python -m manage.rollback)."""
