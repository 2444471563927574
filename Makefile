# Fast local loops. `bash hack/test.sh` (CI) is the whole of tier one; `bash hack/test.sh --full` adds tier two.
#   make units                 the unit tests: seconds, any user, no bootstrap (a Python with ansible-core and pytest)
#   make lint                  ansible-lint, antsibull-changelog lint, ansible-test sanity
#   make integration K=expr    the integration tests whose names match expr (pytest -k), on the lab; root
#   make molecule              molecule test --all; root
#   make test / make full      hack/test.sh / hack/test.sh --full
# The targets that need the project's venv build it first (hack/bootstrap.sh, root: it installs Debian packages).
.PHONY: units lint integration molecule test full venv

VENV ?= .venv
# `make units` takes the venv's Python when there is one, else the first python3 on PATH.
PYTHON ?= $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
K ?=

units:
	@$(PYTHON) -c 'import ansible, pytest' 2>/dev/null || { \
	  echo "make units: $(PYTHON) lacks ansible-core or pytest. Either: bash hack/bootstrap.sh (root, once);" \
	       "or, as any user: python3 -m venv $(VENV) && $(VENV)/bin/pip install -r requirements-test.txt -c constraints.txt;" \
	       "or: make units PYTHON=/path/to/python" >&2; exit 2; }
	$(PYTHON) -m pytest -p no:cacheprovider -q tests/unit

venv:
	bash hack/bootstrap.sh

lint: venv
	bash hack/lint.sh

integration: venv
	bash -c 'source hack/env.sh && python -m pytest -p no:cacheprovider tests/integration $(if $(K),-k "$(K)")'

molecule: venv
	bash hack/molecule.sh

test:
	bash hack/test.sh

full:
	bash hack/test.sh --full
