"""Write plugins/module_utils/_role_spec.py, the parts of the expose role's meta/argument_specs.yml
that the services' checks need on the managed host, where no YAML file of the role is sent.

    python hack/role_spec_module.py            # write it
    python hack/role_spec_module.py --check    # exit 1 when it differs from what would be written

tests/unit run --check, so the module cannot drift from the argument specs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "roles" / "expose" / "meta" / "argument_specs.yml"
TARGET = REPO / "plugins" / "module_utils" / "_role_spec.py"
# What the checks of a field use; descriptions stay in the argument specs.
KEPT = ("type", "elements", "required", "default", "choices", "options")
HEADER = '''# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Written by hack/role_spec_module.py from roles/expose/meta/argument_specs.yml: edit those, then run it.
"""The expose role's argument specs, as far as _services checks them on the managed host."""
from __future__ import annotations

'''


def _checked(options):
    return {name: {key: (_checked(value) if key == "options" else value)
                   for key, value in spec.items() if key in KEPT}
            for name, spec in options.items()}


def _python(value, indent=0):
    """value as Python source: on one line where it fits, else one key per line, with hanging indents (pep8)."""
    flat = repr(value)
    if not isinstance(value, (dict, tuple)) or indent + len(flat) <= 100:
        return flat
    pad = " " * (indent + 4)
    if isinstance(value, tuple):
        lines = [f"{pad}{_python(item, indent + 4)},\n" for item in value]
        return "(\n" + "".join(lines) + " " * indent + ")"
    lines = [f"{pad}{key!r}: {_python(item, indent + 4)},\n" for key, item in value.items()]
    return "{\n" + "".join(lines) + " " * indent + "}"


def text():
    specs = yaml.safe_load(SPECS.read_text(encoding="utf-8"))["argument_specs"]
    variables = sorted(set(specs["main"]["options"]) | set(specs["plan"]["options"]))
    return (HEADER
            + "# The fields of one entry of expose_services (the entry point `service`).\n"
            + f"SERVICE_OPTIONS = {_python(_checked(specs['service']['options']))}\n"
            + "\n# The variables of the entry points main and plan.\n"
            + f"ROLE_VARIABLES = {_python(tuple(variables))}\n")


def main(argv):
    if argv == ["--check"]:
        if TARGET.read_text(encoding="utf-8") != text():
            sys.exit(f"{TARGET.relative_to(REPO)} differs from {SPECS.relative_to(REPO)}: run python hack/role_spec_module.py")
        return
    TARGET.write_text(text(), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
