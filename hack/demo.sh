#!/usr/bin/env bash
# The demo: builds a local lab (master 10.211.55.122 on eth0 and slave 10.211.55.123),
# runs playbooks/expose.yml with the demo service on the master, then
# playbooks/verify.yml from the slave, whose summary shows the JSON the slave received.
#   bash hack/demo.sh                    on hosts made of namespaces on this machine (fast)
#   bash hack/demo.sh --machines         on booted Debian 12 machines, over SSH, as on real servers
#                                        (the first run builds their image, about a minute)
#   bash hack/demo.sh [--machines] --down   remove the services, then tear the lab down
# Safe to run again.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bash "$here/bootstrap.sh"
source "$here/env.sh"
cd "$repo"
inventory=tests/lab/inventory.yml
if [ "${1:-}" = "--machines" ]; then
  inventory=tests/lab/machines.yml
  shift
fi

if [ "${1:-}" = "--down" ]; then
  # Remove the services first where the master is up (taking the lab down removes them anyway).
  if python tests/lab/nslab.py status -i "$inventory" | grep -Eq '^  master +.* up$'; then
    ansible-playbook -i "$inventory" playbooks/expose.yml -e expose_state=absent
  fi
  python tests/lab/nslab.py down -i "$inventory"
  exit 0
fi
python tests/lab/nslab.py up -i "$inventory"
ansible-playbook -i "$inventory" playbooks/expose.yml
ansible-playbook -i "$inventory" playbooks/verify.yml
echo
echo "The slave reached the demo service in the master's ns1 through 10.211.55.122:8090 (see the reply column above)."
echo "The lab is still up; try, from the slave:"
echo "  source hack/env.sh; ansible -i $inventory slave -m ansible.builtin.uri -a 'url=http://10.211.55.122:8090/ return_content=true'"
if [ "$inventory" = tests/lab/machines.yml ]; then
  echo "A shell on the master:    source hack/env.sh; python tests/lab/nslab.py shell -i $inventory master"
  echo "Reboot it for real:       source hack/env.sh; python tests/lab/nslab.py reboot -i $inventory master"
  echo "Tear it down with: bash hack/demo.sh --machines --down"
else
  echo "Tear it down with: bash hack/demo.sh --down"
fi
