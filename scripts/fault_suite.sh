#!/usr/bin/env bash
# The fault-injection and abuse suite, and the table of docs/reliability.md, from one command.
#
#   scripts/fault_suite.sh            full counts (FAULT_RUNS=full: 20 kills per step and mode, 300 mutations
#                                     per artifact, ~700 hostile archives, 20 rounds of 10 requests, ...)
#   scripts/fault_suite.sh --short    the counts CI runs inside `python -m pytest -q`
#   scripts/fault_suite.sh -- -k kill extra pytest arguments after `--`
#
# The outage cases stop and restart a Postgres and a Redis that the session starts for itself on free ports
# (tests/private_services.py); the machine's shared servers are never stopped. Exit status: pytest's.
set -uo pipefail
cd "$(dirname "$0")/.."

runs="full"
if [[ "${1:-}" == "--short" ]]; then runs=""; shift; fi
if [[ "${1:-}" == "--" ]]; then shift; fi

report="$(mktemp)"
output="$(mktemp)"
trap 'rm -f "$report" "$output"' EXIT

command="scripts/fault_suite.sh"
[[ -z "$runs" ]] && command+=" --short"
[[ $# -gt 0 ]] && command+=" -- $*"

FAULT_RUNS="$runs" FAULT_REPORT="$report" python -m pytest -q -p no:randomly tests/faults tests/security "$@" \
  2>&1 | tee "$output"
status=${PIPESTATUS[0]}

summary="$(grep -E '^(=+ )?[0-9]+ (passed|failed)' "$output" | tail -1 | sed -E 's/^=+ //; s/ =+$//')"
python -m tests.faults.report "$report" docs/reliability.md --command "$command" --summary "$summary" || status=1
exit "$status"
