"""The conda environment file lists exactly the dependencies of pyproject.toml."""
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["test"]


def _environment_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml must have one pip section"
    return [r for r in pip_sections[0] if not r.startswith("-e")]


def _as_map(requirements):
    parsed = [Requirement(r) for r in requirements]
    return {r.name.lower().replace("_", "-"): str(r.specifier) for r in parsed}


def test_environment_lists_the_same_requirements_as_pyproject():
    assert _as_map(_environment_requirements()) == _as_map(_pyproject_requirements())


def test_environment_installs_the_package_itself():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip_section
