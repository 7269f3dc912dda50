# Sourced by scripts/*.sh: the Python interpreter of THIS service, never whatever `python` comes first
# on PATH (an operator with the app's virtualenv active would otherwise run us without celery).
#   1. ROLLBACK_PYTHON, when set;
#   2. the service's own virtualenv: <service>/.venv/bin/python, else <service>/venv/bin/python;
#   3. python3 on PATH.
# rollback_require_python NAME: exit 2 with what is missing and how to fix it unless that interpreter
# can import what the service needs. Sets ROLLBACK_PY.

_rollback_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

rollback_python() {
  if [ -n "${ROLLBACK_PYTHON:-}" ]; then
    printf '%s\n' "$ROLLBACK_PYTHON"
  elif [ -x "$_rollback_root/.venv/bin/python" ]; then
    printf '%s\n' "$_rollback_root/.venv/bin/python"
  elif [ -x "$_rollback_root/venv/bin/python" ]; then
    printf '%s\n' "$_rollback_root/venv/bin/python"
  else
    printf '%s\n' python3
  fi
}

rollback_require_python() {
  local name=$1 out missing rc=0
  ROLLBACK_PY=$(rollback_python)
  local fix="set ROLLBACK_PYTHON to the interpreter the rollback service was installed with, or install its requirements: $ROLLBACK_PY -m pip install -r $_rollback_root/requirements.txt"
  if ! command -v "$ROLLBACK_PY" >/dev/null 2>&1; then
    echo "$name: Python interpreter $ROLLBACK_PY not found or not executable; $fix" >&2
    exit 2
  fi
  # Run from the service's folder, where `rollback` lives. The verdict is the line after "missing:".
  out=$(cd "$_rollback_root" && "$ROLLBACK_PY" -c '
import importlib
missing = []
for name in ("celery", "psycopg", "rollback"):
    try:
        importlib.import_module(name)
    except ImportError as exc:
        missing.append(f"{name} ({exc})")
print("missing:" + "; ".join(missing))
' 2>&1) || rc=$?
  missing=$(printf '%s\n' "$out" | sed -n 's/^missing://p' | tail -n 1)
  if [ "$rc" -ne 0 ] || ! printf '%s\n' "$out" | grep -q '^missing:'; then
    echo "$name: cannot run $ROLLBACK_PY ($(printf '%s' "$out" | tail -n 1)); $fix" >&2
    exit 2
  fi
  if [ -n "$missing" ]; then
    echo "$name: $ROLLBACK_PY cannot import: $missing; $fix" >&2
    exit 2
  fi
}
