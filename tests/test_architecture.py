"""docs/architecture.md's module graph is the code's: every `prefopt` import (function-level ones
included) goes from a module to a strictly lower layer, and every module has a layer."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return name.removesuffix(".__init__")


def prefopt_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((REPO / "prefopt").rglob("*.py"))}


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("prefopt"):
            for alias in node.names:  # `from prefopt import plan` imports the module prefopt.plan
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("prefopt"))
    return found - {module_name(path)}


def documented_layers() -> dict[str, int]:
    text = (REPO / "docs" / "architecture.md").read_text()
    table = text.split("<!-- layers -->", 1)[1].split("<!-- end layers -->", 1)[0]
    layers = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].isdigit():
            for module in re.findall(r"`([\w.]+)`", cells[1]):
                layers[module] = int(cells[0])
    return layers


def test_every_import_points_down_the_documented_layers():
    modules = prefopt_modules()
    layers = documented_layers()
    assert set(layers) == set(modules), (
        f"modules without a layer: {sorted(set(modules) - set(layers))}; "
        f"layers naming no module: {sorted(set(layers) - set(modules))}")
    upward = [f"{module} (layer {layers[module]}) imports {target} (layer {layers[target]})"
              for module, path in modules.items() for target in sorted(imports(path, modules))
              if layers[target] >= layers[module]]
    assert not upward, "\n".join(upward)


def test_planning_does_not_import_torch():
    """Parsing the Snakefile (every dry run) makes the plan from the objectives' signatures; no torch."""
    import subprocess
    import sys

    code = ("import sys, yaml, prefopt.run_config, prefopt.tables\n"
            "from prefopt.config_schema import load_config\n"
            "from prefopt.plan import make_plan\n"
            "config = load_config(yaml.safe_load(open('config.yaml')), 'schemas/config.schema.yaml')\n"
            "config['precision'] = 'fp32'\n"
            "assert len(make_plan(config).runs) == 12\n"
            "assert 'prefopt.losses' in sys.modules and 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
