"""scripts/deploy_hook.sh and the other wrappers: the service's own interpreter, and `check` before the
snapshot of `pre`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rollback.manifest import Manifest
from tests.conftest import ROOT


def operator_env(env: dict, **extra: str) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "BACKUP_", "DATA_BASE"))}
    return dict(base, **env, **extra)


def run_script(env: dict, script: str, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / script), *args], cwd=ROOT, env=operator_env(env, **extra),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A Python without the service's packages, like an app's virtualenv activated by an operator."""
    venv = tmp_path_factory.mktemp("app-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return str(venv / "bin" / "python")


@pytest.mark.parametrize("script, args", [("deploy_hook.sh", ["pre"]), ("deploy_hook.sh", ["post"]),
                                          ("backup_all.sh", ["--notes", "x"]), ("restore_all.sh", [])])
def test_an_interpreter_without_the_service_packages_is_refused(env, bare_python, script, args):
    done = run_script(env, script, *args, ROLLBACK_PYTHON=bare_python)
    assert done.returncode == 2, done.stdout + done.stderr
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert f"{bare_python} cannot import: celery (No module named 'celery'); psycopg" in message
    assert "set ROLLBACK_PYTHON" in message and "-m pip install -r" in message


def test_a_missing_interpreter_is_refused(env, tmp_path):
    done = run_script(env, "deploy_hook.sh", "pre", ROLLBACK_PYTHON=str(tmp_path / "no-python"))
    assert done.returncode == 2
    assert f"Python interpreter {tmp_path / 'no-python'} not found" in done.stderr


def test_the_app_venv_first_on_path_is_not_used(live_env, settings, bare_python):
    """`python3` on PATH is the app's bare venv: ROLLBACK_PYTHON (the service's interpreter) wins."""
    path = f"{os.path.dirname(bare_python)}:{os.environ['PATH']}"
    bare = run_script(live_env, "backup_all.sh", "--local", PATH=path)
    assert bare.returncode == 2 and "cannot import: celery" in bare.stderr
    done = run_script(live_env, "backup_all.sh", "--local", "--json", PATH=path, ROLLBACK_PYTHON=sys.executable)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["id"] == Manifest(settings.backup_dir).entries()[-1]["id"]


def test_pre_checks_on_the_worker_and_stops_when_a_check_fails(live_env, settings, worker_process):
    worker_process()
    ok = run_script(live_env, "deploy_hook.sh", "pre", "--deploy-id", "d-1", "--json")
    assert ok.returncode == 0, ok.stderr
    assert "ok    readyz" in ok.stderr and "warn  app_restart" in ok.stderr
    assert json.loads(ok.stdout)["notes"].endswith(" id=d-1")  # stdout stays the snapshot's JSON

    (settings.data_base_dir / "users.json").write_text("broken")  # the app's /readyz answers 503
    refused = run_script(live_env, "deploy_hook.sh", "pre", "--deploy-id", "d-2")
    assert refused.returncode == 1
    assert "FAIL  readyz" in refused.stderr and "HTTP 503" in refused.stderr
    assert "the configuration check failed" in refused.stderr and "DEPLOY_HOOK_SKIP_CHECK=1" in refused.stderr
    assert len(Manifest(settings.backup_dir).entries()) == 1  # no snapshot taken

    forced = run_script(live_env, "deploy_hook.sh", "pre", "--deploy-id", "d-2", DEPLOY_HOOK_SKIP_CHECK="1")
    assert forced.returncode == 0, forced.stderr
    assert len(Manifest(settings.backup_dir).entries()) == 2


def test_post_without_a_deploy_id_still_watches(live_env, settings, worker_process):
    """Without RENDER_GIT_COMMIT or --deploy-id the hook names the deploy itself: a canary without one
    would only probe /readyz, and never roll back."""
    worker_process()
    env = {k: v for k, v in live_env.items() if k != "RENDER_GIT_COMMIT"}
    assert run_script(env, "deploy_hook.sh", "pre").returncode == 0
    done = run_script(env, "deploy_hook.sh", "post", "--json")
    assert done.returncode == 0, done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["status"] == "ready" and verdict["deploy_id"].startswith("deploy-")
    assert verdict["snapshot_id"] == Manifest(settings.backup_dir).entries()[-1]["id"]
