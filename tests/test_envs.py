"""The conda envs under envs/ can run their rules: pins agree with pyproject.toml (and the Makefile's
data wheels), and every
third-party package a rule's script imports (through prefopt, transitively) is in its env."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\[\]-]+)==([^\s;]+)$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.split("[")[0]).lower()


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements.extend(extra)
    # The model and benchmark-data wheels the Makefile installs with --no-deps (DATA_WHEELS).
    makefile = (REPO / "Makefile").read_text()
    wheels = re.search(r"^DATA_WHEELS := (.*?)(?<!\\)\n", makefile, re.S | re.M).group(1)
    requirements.extend(wheels.replace("\\", " ").split())
    return {normalize(m.group(1)): m.group(2) for r in requirements if (m := PIN.match(r.strip()))}


def env_pins(path: Path) -> dict[str, str]:
    spec = yaml.safe_load(path.read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {normalize(m.group(1)): m.group(2) for line in pip if (m := PIN.match(line.strip()))}


def rules_with_scripts() -> list[tuple[str, str, str]]:
    """(rule, env file, script) for every rule that runs a workflow script."""
    found = []
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=rule )", smk.read_text()):
            name = re.match(r"rule (\w+):", block)
            env = re.search(r'conda:\s*\n\s*"\.\./(envs/[\w.]+)"', block)
            script = re.search(r"(workflow/scripts/\w+\.py)", block)
            if name and env and script:
                found.append((name.group(1), env.group(1), script.group(1)))
    return found


def imported_modules(path: Path, seen: set[Path]) -> set[str]:
    """Top-level names of every module `path` imports, following prefopt modules."""
    if path in seen:
        return set()
    seen.add(path)
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for module in modules:
            names.add(module.split(".")[0])
            if module.startswith("prefopt"):
                target = REPO / Path(*module.split("."))
                for candidate in (target.with_suffix(".py"), target / "__init__.py"):
                    if candidate.exists():
                        names |= imported_modules(candidate, seen)
    return names


def test_env_pins_agree_with_pyproject():
    pins = pyproject_pins()
    for env in sorted((REPO / "envs").glob("*.yaml")):
        for name, version in env_pins(env).items():
            if name == "torch":
                assert version == "2.13.0", env.name  # the Makefile's CPU build
            else:
                assert pins.get(name) == version, f"{env.name}: {name}=={version}, pyproject.toml has {pins.get(name)}"


@pytest.mark.parametrize("rule, env, script", rules_with_scripts())
def test_env_has_what_the_rule_imports(rule, env, script):
    distributions = importlib.metadata.packages_distributions()
    available = set(env_pins(REPO / env))
    missing = set()
    for module in imported_modules(REPO / script, set()):
        if module in sys.stdlib_module_names or module in ("prefopt", "__future__"):
            continue
        owners = {normalize(d) for d in distributions.get(module, [])}
        if owners and not owners & available:
            missing |= owners
    assert not missing, f"rule {rule} runs {script}, whose imports need {sorted(missing)} not in {env}"


def test_every_rule_uses_an_env_that_exists():
    for smk in (REPO / "rules").glob("*.smk"):
        for env in re.findall(r'"\.\./(envs/[\w.]+)"', smk.read_text()):
            assert (REPO / env).exists(), f"{smk.name}: {env}"
    assert rules_with_scripts()
