#!/usr/bin/env bash
# Every test of the collection. Installs what it needs first (hack/bootstrap.sh),
# so it runs as-is on a fresh Debian 12 machine as root. Exits non-zero when any
# check fails. Extra arguments go to pytest (e.g. -k veth).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bash "$here/bootstrap.sh"
source "$here/env.sh"
cd "$repo"

step() { printf '\n=== %s\n' "$*"; }

step "ansible-lint (profile: production)"
ansible-lint --offline

step "antsibull-changelog lint"
antsibull-changelog lint

step "ansible-test sanity"
bash "$here/sanity.sh"

step "molecule test --all: the role on labs of namespaces"
bash "$here/molecule.sh"

# Last, so that pytest's closing line is the last line of the run.
step "pytest: unit and integration tests (real namespaces)"
python -m pytest -p no:cacheprovider tests/unit tests/integration "$@"
