#!/usr/bin/env bash
# ansible-test sanity needs the collection at ansible_collections/netns/expose:
# copy the checkout (tracked and new files, as git sees them) into such a tree.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
dest="$tree/ansible_collections/netns/expose"
mkdir -p "$dest"
# --ignore-missing-args: files deleted in the work tree but not yet in git's index are left out.
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | rsync -a --from0 --ignore-missing-args --files-from=- ./ "$dest/")
# ansible-test uses git to list the collection's files.
(cd "$dest" && git init -q && git add -A)
# ansible-test bootstraps pip into its sanity venvs with a get-pip script from a
# host this machine cannot reach. Its error message says the script may be put in
# its cache by hand: put there a stand-in that bootstraps the pip bundled with
# Python (ensurepip) and then installs the requested pip from PyPI.
pip_version=$(python -c 'import inspect, re
from ansible_test._internal import python_requirements as pr
print(re.search(r"pip=.([0-9.]+)", inspect.getsource(pr.get_venv_packages)).group(1))')
cache="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
if ! grep -qs "netns.expose" "$cache"; then
  mkdir -p "$(dirname "$cache")"
  cat > "$cache" <<'PY'
"""Stand-in for get-pip.py (written by netns.expose hack/sanity.sh)."""
import subprocess
import sys

pip_args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
# In a child process: ensurepip points PIP_CONFIG_FILE at /dev/null in its own
# environment, which would hide the machine's pip configuration from the install.
subprocess.check_call([sys.executable, "-m", "ensurepip"])
subprocess.check_call([sys.executable, "-m", "pip", "install", "--upgrade", *pip_args])
PY
fi

cd "$dest"
ansible-test sanity --python "$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" --requirements "$@"
