"""prefopt.objectives: declaring an objective, its hyperparameters' checks, the derived schema, and a
user's own objective module joining the registry (planner side; the DAG test is test_workflow_objectives.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Annotated

import pytest
import yaml

from prefopt.config_schema import ConfigError, load_config
from prefopt.objectives import (
    REGISTRY,
    ObjectiveError,
    Range,
    UnknownHyperparameterError,
    get_objective,
    load_objectives,
    objective,
    objective_sources,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "schemas" / "config.schema.yaml"

USER_MODULE = '''
"""A user's own objective, outside the package."""
from typing import Annotated

import torch.nn.functional as F

from prefopt.losses import sequence_mean_logps
from prefopt.objectives import Range, objective


@objective("{name}", label="Margin + NLL", citation="a test")
def margin_nll_loss(chosen_logps, chosen_mask, rejected_logps, rejected_mask, *,
                    beta: Annotated[float, Range(gt=0)] = 1.0, alpha: Annotated[float, Range(ge=0)] = 0.5):
    chosen = sequence_mean_logps(chosen_logps, chosen_mask)
    rejected = sequence_mean_logps(rejected_logps, rejected_mask)
    loss = (-F.logsigmoid(beta * (chosen - rejected)) - alpha * chosen).mean()
    return loss, {{"logps/chosen": chosen.detach().mean(), "logps/rejected": rejected.detach().mean()}}
'''


def write_user_module(folder: Path, module: str, name: str) -> Path:
    path = folder / f"{module}.py"
    path.write_text(USER_MODULE.format(name=name))
    return path


def test_the_registry_module_does_not_import_torch():
    code = "import sys, prefopt.objectives, prefopt.config_schema, prefopt.plan; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_hyperparameters_come_from_the_signature():
    slime = get_objective("slime")
    p = slime.hyperparameter("p")
    assert (p.type, p.default, p.range) == (float, 2.5, Range(gt=0))
    assert slime.hyperparameter("use_hard_margin").type is bool
    assert slime.json_schema()["properties"]["p"] == {"type": "number", "exclusiveMinimum": 0}
    assert slime.json_schema()["properties"]["preset"] == {"enum": ["authors_code", "authors_script", "paper"]}
    assert get_objective("dpo").needs_reference and not slime.needs_reference
    assert slime.label == "SLIME" and "2026" in slime.citation


@pytest.mark.parametrize("kwargs, message", [
    ({"p": 0}, "slime.p: must be > 0, got 0.0"),
    ({"p": "2"}, "slime.p: must be a number, got '2'"),
    ({"use_soft_margin": 1}, "slime.use_soft_margin: must be true or false, got 1"),
    ({"lambda_l": float("nan")}, "slime.lambda_l: must be finite, got nan"),
    ({"pp": 2.0}, "slime.pp: 'slime' has no hyperparameter 'pp'; did you mean 'p'?"),
])
def test_bad_hyperparameters_fail_in_one_line_naming_them(kwargs, message):
    with pytest.raises(ObjectiveError) as error:
        get_objective("slime").check_kwargs(kwargs)
    assert str(error.value) == message


def test_a_direct_call_checks_its_keywords_too():
    import torch

    from prefopt.losses import slime_loss

    ones = torch.ones(1, 2)
    with pytest.raises(ObjectiveError, match="p: must be > 0"):
        slime_loss(-ones, ones, -ones, ones, p=-1.0)
    with pytest.raises(UnknownHyperparameterError):
        get_objective("simpo").check_kwargs({"lamda_w": 0.1})


def test_declarations_are_checked_when_registered():
    with pytest.raises(ObjectiveError, match="needs a default"):
        @objective("test_no_default", label="x", citation="x")
        def no_default(a, b, c, d, *, beta: float):
            return None
    with pytest.raises(ObjectiveError, match="not both"):
        @objective("test_half_reference", label="x", citation="x")
        def half(a, b, c, d, *, ref_chosen_logps, beta: float = 1.0):
            return None
    with pytest.raises(ObjectiveError, match="bool, int or float"):
        @objective("test_bad_type", label="x", citation="x")
        def bad_type(a, b, c, d, *, beta: str = "x"):
            return None
    with pytest.raises(ObjectiveError, match=r"its default\): must be > 0"):
        @objective("test_bad_default", label="x", citation="x")
        def bad_default(a, b, c, d, *, beta: Annotated[float, Range(gt=0)] = 0.0):
            return None
    for bad_name in ("My-Loss", "sft", "2po"):
        with pytest.raises(ObjectiveError, match="lower-case letters, digits and _"):
            objective(bad_name, label="x", citation="x")(lambda a, b, c, d, *, beta=1.0: None)
    with pytest.raises(ObjectiveError, match="already registered by prefopt.losses"):
        @objective("slime", label="x", citation="x")
        def impostor(a, b, c, d, *, beta: float = 1.0):
            return None
    assert not {"test_no_default", "test_half_reference", "test_bad_type", "test_bad_default"} & set(REGISTRY)
    assert REGISTRY["slime"].module == "prefopt.losses"


def test_a_user_module_joins_the_registry_and_the_schema(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # found in the working directory, as `snakemake` run there finds it
    source = write_user_module(tmp_path, "user_losses_a", "margin_nll_a")
    load_objectives(["user_losses_a"])
    spec = get_objective("margin_nll_a")
    assert spec.module == "user_losses_a" and spec.defaults == {"beta": 1.0, "alpha": 0.5}
    assert objective_sources(["user_losses_a"]) == {"margin_nll_a": str(source)}

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["objectives"] = ["user_losses_a"]
    config["methods"] = {"slime": {}, "margin_nll_a": {"alpha": 0.25}}
    loaded = load_config(config, SCHEMA)
    assert loaded["methods"]["margin_nll_a"] == {"alpha": 0.25}
    config["methods"]["margin_nll_a"] = {"alpah": 0.25}
    with pytest.raises(ConfigError, match="unknown key 'alpah' in methods.margin_nll_a; did you mean 'alpha'"):
        load_config(config, SCHEMA)
    config["methods"]["margin_nll_a"] = {"beta": 0}
    with pytest.raises(ConfigError, match="methods.margin_nll_a.beta: 0 is less than or equal to the minimum of 0"):
        load_config(config, SCHEMA)


def test_objective_modules_that_cannot_load_fail_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["objectives"] = ["no_such_losses_module"]
    with pytest.raises(ConfigError, match="objectives: cannot import 'no_such_losses_module'"):
        load_config(config, SCHEMA)
    (tmp_path / "broken_losses.py").write_text("raise RuntimeError('boom')\n")
    config["objectives"] = ["broken_losses"]
    with pytest.raises(ConfigError, match="importing 'broken_losses' failed: RuntimeError: boom"):
        load_config(config, SCHEMA)
    config["objectives"] = []
    config["methods"] = {"margin_nl": {}}
    with pytest.raises(ConfigError, match="unknown method 'margin_nl'"):
        load_config(config, SCHEMA)


def test_a_job_imports_the_module_from_the_file_the_planner_found(tmp_path):
    """The job (another process, maybe another conda env) imports the file it was given, not a name."""
    (tmp_path / "elsewhere").mkdir()
    source = write_user_module(tmp_path / "elsewhere", "user_losses_b", "margin_nll_b")
    code = textwrap.dedent(f"""
        from prefopt.objectives import get_objective, import_source
        import_source({str(source)!r})
        assert get_objective("margin_nll_b").module == "user_losses_b"
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_the_docs_method_list_is_the_registrys():
    from prefopt.objectives import markdown_table

    text = (REPO / "docs" / "objectives.md").read_text()
    block = text.split("<!-- methods: python -m prefopt.objectives -->\n", 1)[1].split("<!-- end methods -->", 1)[0]
    assert block == markdown_table()
    assert "| `slime` | SLIME | no |" in block and "| `dpo` | DPO | yes |" in block
