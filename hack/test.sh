#!/usr/bin/env bash
# Every test of the collection: what CI runs (.ci/run). Installs what it needs first (hack/bootstrap.sh),
# so it runs as-is on a fresh Debian 12 machine as root. Exits non-zero when any check fails.
#
#   bash hack/test.sh           tier one: lint, sanity, molecule test --all, and every pytest test
#                               but those marked `full`
#   bash hack/test.sh --full    tier one and tier two (the tests marked `full`)
#
# Further arguments go to pytest (e.g. -k veth). The linters and molecule run beside pytest, their
# output held back and printed when they end; pytest's workers (pytest-xdist) each build labs of
# their own. The run ends with the time of each phase and, as its last line, pytest's closing line.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tier=(-m "not full")
bootstrap=()
if [ "${1:-}" = "--full" ]; then
  tier=()
  bootstrap=(--full)
  shift
fi
# pytest's workers: 3 keep 2 cores busy (see "Tiers, times and fast loops" in the README).
workers=${NETNS_EXPOSE_TEST_WORKERS:-3}

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
# Interrupted: the linters and molecule (beside pytest) go too.
trap 'kill $(jobs -p) 2>/dev/null; exit 130' INT TERM
run_start=$(date +%s)

# timed NAME COMMAND...: runs COMMAND, records NAME, its duration and its exit status in $logs/phases.
timed() {
  local name=$1 start status=0
  shift
  start=$(date +%s)
  "$@" || status=$?
  printf '%s\t%s\t%s\n' "$name" "$(( $(date +%s) - start ))" "$status" >> "$logs/phases"
  return "$status"
}

timed "bootstrap (Debian packages, venv)" bash "$here/bootstrap.sh" "${bootstrap[@]}"
source "$here/env.sh"
cd "$repo"

# Beside pytest, each to a log of its own: the linters, then molecule.
timed "lint: ansible-lint, changelog, sanity (beside pytest)" bash "$here/lint.sh" > "$logs/lint.log" 2>&1 &
lint=$!
timed "molecule test --all (beside pytest)" bash "$here/molecule.sh" > "$logs/molecule.log" 2>&1 &
molecule=$!

printf '\n=== %s\n' "pytest: unit and integration tests (real namespaces and machines), $workers workers"
pytest_status=0
# --dist loadscope: a test file's tests go to one worker, so that what a file builds once (a lab of machines,
# a fleet) is built once.
timed "pytest ($workers workers)" python -m pytest -p no:cacheprovider -n "$workers" --dist loadscope \
  --durations=15 --junitxml=tests/output/pytest-junit.xml "${tier[@]}" tests/unit tests/integration "$@" 2>&1 \
  | tee "$logs/pytest.log" || pytest_status=$?

status=$pytest_status
for job in lint molecule; do
  job_status=0
  wait "${!job}" || job_status=$?
  printf '\n=== %s (exit status %s)\n' "$job" "$job_status"
  cat "$logs/$job.log"
  [ "$job_status" = 0 ] || status=$job_status
done

printf '\n=== where the time of pytest went, by test file (tests/output/pytest-junit.xml)\n'
python hack/test_times.py tests/output/pytest-junit.xml --most 12

printf '\n=== phase times\n'
printf '%-58s %8s %s\n' "phase" "seconds" "exit"
while IFS=$'\t' read -r name seconds phase_status; do
  printf '%-58s %8s %s\n' "$name" "$seconds" "$phase_status"
done < "$logs/phases"
printf '%-58s %8s\n' "the whole run (wall clock)" "$(( $(date +%s) - run_start ))"

# pytest's closing line ("N passed ...") is the run's last line.
grep -E '^=+ .*(passed|failed|error|skipped|deselected).* in [0-9.]+s' "$logs/pytest.log" | tail -n 1 || true
exit "$status"
