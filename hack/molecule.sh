#!/usr/bin/env bash
# The molecule scenarios (molecule/*/molecule.yml): the expose role on labs of network
# namespaces built on this machine, no containers. Needs root and the venv (hack/bootstrap.sh,
# which hack/test.sh runs first). Extra arguments go to `molecule test --all`
# (e.g. --destroy=never to keep the labs after a failure).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/env.sh"
cd "$repo"
if ! command -v molecule >/dev/null; then
    echo "hack/molecule.sh: no molecule in $venv; run hack/bootstrap.sh first" >&2
    exit 1
fi
# Molecule 26 looks for a collection's scenarios in extensions/molecule/ and warns about
# molecule/; this collection keeps them in molecule/.
export MOLECULE_GLOB="molecule/*/molecule.yml"
# Plain logs, as hack/env.sh asks of Ansible (ANSIBLE_NOCOLOR).
export NO_COLOR=1
exec molecule test --all "$@"
