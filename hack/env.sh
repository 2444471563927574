# Sourced by the hack/ scripts: puts the venv first on PATH and makes this
# checkout importable as the collection netns.expose without installing it.
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${NETNS_EXPOSE_VENV:-$repo/.venv}
mkdir -p "$venv/collections/ansible_collections/netns"
ln -sfn "$repo" "$venv/collections/ansible_collections/netns/expose"
export PATH="$venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$venv/collections"
export ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=false
export ANSIBLE_NOCOLOR=1
