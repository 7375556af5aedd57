"""Declared dependencies are what the package imports: deptry, configured in pyproject.toml
([tool.deptry]), over fedvlm/ (docs/RELIABILITY.md, "8. Dependencies")."""

import os
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def _deptry(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "deptry", "fedvlm", "--no-ansi", *args], cwd=REPOSITORY, env=env,
                          capture_output=True, text=True, timeout=300)


def test_every_import_is_declared_and_every_dependency_imported():
    result = _deptry()
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_undeclared_import_or_an_unused_dependency_fails(tmp_path):
    # The same configuration with scipy no longer declared and a dependency nothing imports.
    pyproject = (REPOSITORY / "pyproject.toml").read_text()
    assert '    "scipy>=1.10",\n' in pyproject
    altered = pyproject.replace('    "scipy>=1.10",\n', '    "rich>=13",\n')
    (tmp_path / "pyproject.toml").write_text(altered)
    result = _deptry("--config", str(tmp_path / "pyproject.toml"))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "'scipy' imported but" in output and "'rich' defined as a dependency but not used" in output
