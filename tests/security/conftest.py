"""The abuse and secrecy half of the fault suite: it shares the fault suite's hooks, fixtures and figures."""

from tests.faults.conftest import (  # noqa: F401  (hooks and fixtures shared with tests/faults)
    figures, gate, pytest_collection_modifyitems, pytest_terminal_summary, shared_servers_untouched, workers)
