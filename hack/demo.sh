#!/usr/bin/env bash
# The demo: builds a local lab (a master and a slave made of namespaces),
# configures the master and shows the result from the slave.
#   bash hack/demo.sh          build (or rebuild) and run; safe to run again
#   bash hack/demo.sh --down   tear the lab down
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bash "$here/bootstrap.sh"
source "$here/env.sh"
inventory="$repo/tests/lab/inventory.yml"

if [ "${1:-}" = "--down" ]; then
  python "$repo/tests/lab/nslab.py" down -i "$inventory"
  exit 0
fi
python "$repo/tests/lab/nslab.py" up -i "$inventory"
ansible-playbook -i "$inventory" "$here/demo.yml"
echo
echo "The lab is still up. Tear it down with: bash hack/demo.sh --down"
