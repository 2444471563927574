"""The README's table of the role's variables is the one meta/argument_specs.yml gives."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_readme_carries_the_generated_role_variable_table():
    check = subprocess.run([sys.executable, str(REPO / "hack" / "role_vars_table.py"), "--check"],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
