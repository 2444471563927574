"""What is generated from the role's meta/argument_specs.yml is what it gives now: the README's table of
the role's variables, and the service fields and variable names the host-side checks use."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("generator", ["role_vars_table.py", "role_spec_module.py"])
def test_what_the_argument_specs_generate_is_up_to_date(generator):
    check = subprocess.run([sys.executable, str(REPO / "hack" / generator), "--check"],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
