"""Streaming comparisons with bounded memory: two databases on primary keys (`tables`), two directory
trees (`tree`). What a difference means is the caller's (rollback/discarded.py, rollback/plan.py)."""
