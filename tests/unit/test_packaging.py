"""The built distribution carries every subpackage (a non-editable `pip install` must run the daemon)."""

import tomllib
from pathlib import Path

from setuptools import find_namespace_packages, find_packages

REPO = Path(__file__).resolve().parents[2]


def test_every_subpackage_of_procguard_and_procguardctl_is_packaged() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packaged = set(find_packages(where=str(REPO), include=include))
    on_disk = {p for p in find_namespace_packages(where=str(REPO), include=["procguard*", "procguardctl*"])
               if (REPO / p.replace(".", "/") / "__init__.py").exists()}
    assert "procguard.engine" in on_disk and "procguardctl.importer" in on_disk, on_disk
    assert packaged == on_disk, sorted(on_disk ^ packaged)
