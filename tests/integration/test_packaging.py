"""`pip install <repo>` into a protected app's own virtualenv: the app's pins stay, the in-app
integration imports, the service-only packages stay out, and the `rollback` command runs.

Builds from a copy of the repo so the build leaves no build/ or *.egg-info in the working tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP_PINS = {"Flask": "3.0.3", "SQLAlchemy": "2.0.25", "alembic": "1.12.1", "redis": "5.0.1"}
SERVICE_ONLY = ("celery", "kombu", "psycopg", "flask_admin", "flask_wtf", "zstandard", "gunicorn")
DIST = "flask-pg-rollback"

pytestmark = pytest.mark.slow


def _index_url() -> str:
    url = os.environ.get("PIP_INDEX_URL", "").strip()
    if not url:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                             capture_output=True, text=True)
        url = out.stdout.strip() if out.returncode == 0 else ""
    return (url or "https://pypi.org/simple").rstrip("/")


@pytest.fixture(scope="module")
def index_reachable():
    url = f"{_index_url()}/flask/"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15):
            pass
    except urllib.error.HTTPError:
        pass  # the index answered: reachable
    except (urllib.error.URLError, OSError) as exc:
        pytest.skip(f"package index {url} unreachable: {exc}")


def run(*cmd, timeout=240, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_install_into_an_app_venv_keeps_its_pins(tmp_path, index_reachable):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "build", "dist", "*.egg-info", "demo-state", "logs", ".venv", "venv"))
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python, env = venv / "bin" / "python", {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)

    run(python, "-m", "pip", "install", "-q", *(f"{name}=={v}" for name, v in APP_PINS.items()), env=env)
    run(python, "-m", "pip", "install", "-q", source, env=env)

    report = run(python, "-c", f"""
import importlib.metadata as md, importlib.util, json
dist = md.distribution({DIST!r})
print(json.dumps({{
    "versions": {{name: md.version(name) for name in {list(APP_PINS)!r}}},
    "service_only": [m for m in {SERVICE_ONLY!r} if importlib.util.find_spec(m) is not None],
    "top_level": sorted({{str(f).split("/")[0] for f in dist.files if not str(f).startswith(("..", "__pycache__"))}}),
}}))
from rollback.flask import init_app
""", cwd=tmp_path, env=env)
    found = json.loads(report.stdout)
    assert found["versions"] == APP_PINS
    assert found["service_only"] == []
    dist_info = [name for name in found["top_level"] if name.endswith(".dist-info")]
    assert sorted(set(found["top_level"]) - set(dist_info)) == \
        ["celeryconfig.py", "manage", "rollback", "tasks", "web"]

    help_text = run(venv / "bin" / "rollback", "--help", cwd=tmp_path, env=env).stdout
    assert "snapshot" in help_text and "restore" in help_text
