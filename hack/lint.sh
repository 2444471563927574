#!/usr/bin/env bash
# The linters: ansible-lint (profile production), antsibull-changelog lint, ansible-test sanity.
# Needs the venv (hack/bootstrap.sh). Exits non-zero when any of them fails.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/env.sh"
cd "$repo"

printf '\n=== %s\n' "ansible-lint (profile: production)"
ansible-lint --offline
printf '\n=== %s\n' "antsibull-changelog lint"
antsibull-changelog lint
printf '\n=== %s\n' "ansible-test sanity"
bash "$here/sanity.sh"
