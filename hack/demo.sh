#!/usr/bin/env bash
# The demo: builds a local lab (master 10.211.55.122 on eth0 and slave 10.211.55.123),
# runs playbooks/expose.yml, starts the demo service in the master's ns1 (the services
# with demo: true), then runs playbooks/verify.yml from the slave, whose summary shows
# the JSON the slave received.
#   bash hack/demo.sh                    on hosts made of namespaces on this machine (fast); they have
#                                        no systemd: tests/lab/demo_services.yml runs the demo service
#   bash hack/demo.sh --machines         on booted Debian 12 machines, over SSH, as on real servers;
#                                        playbooks/demo.yml runs it as a systemd unit
#                                        (the first run builds their image, about a minute)
#   bash hack/demo.sh [--machines] --down   stop the demo service, remove the services, tear the lab down
# NETNS_EXPOSE_DEMO_INVENTORY=PATH uses another inventory of the same shape (another lab_name,
# so that it does not touch the lab of tests/lab/inventory.yml or tests/lab/machines.yml).
# Safe to run again.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bash "$here/bootstrap.sh"
source "$here/env.sh"
cd "$repo"
inventory=tests/lab/inventory.yml
demo_playbook=tests/lab/demo_services.yml
if [ "${1:-}" = "--machines" ]; then
  inventory=tests/lab/machines.yml
  demo_playbook=playbooks/demo.yml
  shift
fi
inventory=${NETNS_EXPOSE_DEMO_INVENTORY:-$inventory}

if [ "${1:-}" = "--down" ]; then
  # Where the master is up (nslab's answer is its exit status), stop the demo service
  # before its namespace goes, then remove the services; taking the lab down would
  # remove them anyway.
  if python tests/lab/nslab.py status -i "$inventory" master; then
    ansible-playbook -i "$inventory" "$demo_playbook" -e expose_state=absent
    ansible-playbook -i "$inventory" playbooks/expose.yml -e expose_state=absent
  fi
  python tests/lab/nslab.py down -i "$inventory"
  exit 0
fi
python tests/lab/nslab.py up -i "$inventory"
ansible-playbook -i "$inventory" playbooks/expose.yml
ansible-playbook -i "$inventory" "$demo_playbook"
ansible-playbook -i "$inventory" playbooks/verify.yml
echo
echo "The slave reached the demo service in the master's ns1 through 10.211.55.122:8090 (see the reply column above)."
echo "The lab is still up; try, from the slave:"
echo "  source hack/env.sh; ansible -i $inventory slave -m ansible.builtin.uri -a 'url=http://10.211.55.122:8090/ return_content=true'"
# The teardown takes the same inventory: say so when it is not the default.
teardown="bash hack/demo.sh"
if [ -n "${NETNS_EXPOSE_DEMO_INVENTORY:-}" ]; then
  teardown="NETNS_EXPOSE_DEMO_INVENTORY=$inventory $teardown"
fi
echo "The mappings:             source hack/env.sh; ansible -i $inventory master -m ansible.builtin.command -a 'nft list table ip netns_expose'"
echo "Each packet's path:       source hack/env.sh; ansible-playbook -i $inventory playbooks/explain.yml   (see \"Explaining a mapping\" in the README)"
if [ "$demo_playbook" = playbooks/demo.yml ]; then
  echo "A shell on the master:    source hack/env.sh; python tests/lab/nslab.py shell -i $inventory master"
  echo "The demo service's unit:  ... master -- systemctl status netns-expose-demo-http-web.service"
  echo "Reboot it for real:       source hack/env.sh; python tests/lab/nslab.py reboot -i $inventory master"
  echo "Tear it down with: $teardown --machines --down"
else
  echo "The demo service:         source hack/env.sh; python tests/lab/demo_runner.py -i $inventory status"
  echo "Tear it down with: $teardown --down"
fi
