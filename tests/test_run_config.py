"""prefopt.run_config: the frozen RunConfig, checked once against the schema's `$defs/run_config`
(one-line errors naming the file and the key), torch-free; and the import order of the training modules."""

from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefopt.run_config import (Data, Lora, Probes, RunConfig, RunConfigError, Training, load_schema,
                                run_config_schema, schema_default)
from run_configs import checked_run_config, complete_run_config

REPO = Path(__file__).resolve().parents[1]


def written(tmp_path, raw, name="slime-abc.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(raw, sort_keys=True))
    return path


def load_error(tmp_path, raw) -> str:
    path = written(tmp_path, raw)
    with pytest.raises(RunConfigError) as error:
        RunConfig.load(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


# ------------------------------------------------------------------------------------------- reading


def test_a_planned_run_config_loads_typed_and_gives_back_its_exact_json(tmp_path):
    raw = complete_run_config("slime", training={"max_steps": 4})
    raw["loss_kwargs"]["p"] = 2  # an int where the signature says float: checked, and kept as written
    run_config = RunConfig.load(written(tmp_path, raw))
    assert run_config.method == "slime" and not run_config.is_sft
    assert run_config.training.max_steps == 4 and run_config.training.max_grad_norm is None
    assert run_config.training.precision == "fp32" and run_config.training.num_gpus == 0
    assert run_config.lora.target_modules == tuple(raw["lora"]["target_modules"])
    assert run_config.data == Data(on_bad_rows="drop") and run_config.probes is None
    assert run_config.loss_kwargs["p"] == 2 and isinstance(run_config.loss_kwargs["p"], int)  # as written, not 2.0
    # to_dict is the file's object, value for value: the job's identity hash is unchanged.
    assert run_config.to_dict() == raw and run_config.to_json() == json.dumps(raw, sort_keys=True)
    assert run_config.sha256() == hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()
    assert RunConfig.from_dict(run_config.to_dict()) == run_config and hash(run_config) == hash(RunConfig.from_dict(raw))
    sft = checked_run_config("sft", lora=None)
    assert sft.is_sft and sft.lora is None and dict(sft.loss_kwargs) == {} and sft.to_dict()["lora"] is None


def test_a_run_config_is_frozen():
    run_config = checked_run_config("slime", probes={"every_steps": 2, "pairs": 3})
    for target, name, value in ((run_config, "method", "dpo"), (run_config.training, "learning_rate", 1.0),
                                (run_config.lora, "r", 8), (run_config.data, "on_bad_rows", "error"),
                                (run_config.probes, "pairs", 4)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(target, name, value)
    with pytest.raises(TypeError):
        run_config.loss_kwargs["p"] = 3.0
    with pytest.raises(AttributeError):
        run_config.lora.target_modules.append("lm_head")
    changed = run_config.with_training(precision="bf16")  # a checked copy; the original is unchanged
    assert changed.training.precision == "bf16" and run_config.training.precision == "fp32"
    with pytest.raises(RunConfigError, match=r"'training\.precision': 'fp16' is not one of"):
        run_config.with_training(precision="fp16")


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("section", "key"), [("training", "weight_decay"), ("training", "seed"), ("lora", "dropout"),
                                              ("data", "on_bad_rows"), (None, "probes"), (None, "loss_kwargs")])
def test_a_missing_key_fails_naming_it(tmp_path, section, key):
    raw = complete_run_config("slime")
    del (raw[section] if section else raw)[key]
    where = f"{section}.{key}" if section else key
    assert load_error(tmp_path, raw).endswith(f"run config '{where}' is missing (the DAG writes complete run configs)")


def test_every_key_the_schema_declares_is_required(tmp_path):
    """The required keys come from the schema's definitions, not from a list here: drop any one, it fails."""
    raw = complete_run_config("slime")
    raw["probes"] = {"every_steps": 2, "pairs": 3}
    for section in ("training", "lora", "data", "probes"):
        for key in raw[section]:
            broken = copy.deepcopy(raw)
            del broken[section][key]
            with pytest.raises(RunConfigError, match=rf"'{section}\.{key}' is missing"):
                RunConfig.from_dict(broken)


@pytest.mark.parametrize(("section", "key", "hint"), [
    ("training", "weight_decy", "did you mean 'weight_decay'?"),
    ("lora", "rank", "known: r, alpha, dropout, target_modules, modules_to_save"),
    ("data", "on_bad", "did you mean 'on_bad_rows'?"),
    (None, "seeds", "known: method, loss_kwargs, training, lora, data, probes"),
])
def test_an_unknown_key_fails_naming_it(tmp_path, section, key, hint):
    raw = complete_run_config("slime")
    (raw[section] if section else raw)[key] = 1
    where = f"{section}.{key}" if section else key
    assert load_error(tmp_path, raw).endswith(f"run config '{where}': unknown key ({hint})")


@pytest.mark.parametrize(("section", "key", "value", "problem"), [
    ("training", "max_length", "512", "'512' is not of type 'integer'"),
    ("training", "gradient_checkpointing", 1, "1 is not of type 'boolean'"),
    ("training", "per_device_train_batch_size", 0, "0 is less than the minimum of 1"),
    ("training", "learning_rate", 0, "0 is less than or equal to the minimum of 0"),
    ("training", "max_grad_norm", -1.0, "-1.0 is less than or equal to the minimum of 0"),
    ("training", "precision", "fp16", "'fp16' is not one of ['auto', 'fp32', 'bf16']"),
    ("training", "device", "tpu", "'tpu' is not one of ['cpu', 'cuda']"),
    ("lora", "target_modules", [], "[] should be non-empty"),
    ("lora", "r", 0.5, "0.5 is not of type 'integer'"),
    ("data", "on_bad_rows", "keep", "'keep' is not one of ['drop', 'error']"),
    (None, "lora", 3, "3 is not of type 'null' or 'object'"),
    (None, "method", 1, "1 is not of type 'string'"),
])
def test_a_value_of_the_wrong_type_or_range_fails_naming_its_key(tmp_path, section, key, value, problem):
    raw = complete_run_config("slime")
    (raw[section] if section else raw)[key] = value
    where = f"{section}.{key}" if section else key
    assert load_error(tmp_path, raw).endswith(f"run config '{where}': {problem}")


def test_probes_are_checked_like_the_rest(tmp_path):
    raw = {**complete_run_config("slime"), "probes": {"every_steps": 0, "pairs": 3}}
    assert load_error(tmp_path, raw).endswith("run config 'probes.every_steps': 0 is less than the minimum of 1")
    raw["probes"] = {"every_steps": 2}
    assert load_error(tmp_path, raw).endswith("run config 'probes.pairs' is missing (the DAG writes complete run configs)")


def test_method_and_loss_kwargs_are_checked_against_the_objective(tmp_path):
    raw = complete_run_config("slime")
    assert load_error(tmp_path, {**raw, "method": "slme"}).endswith(
        "run config 'method': unknown objective 'slme'; did you mean 'slime'? (or 'sft')")
    for change, problem in (({"pp": 1.0}, "'loss_kwargs.pp': 'slime' has no hyperparameter 'pp'; did you mean 'p'?"),
                            ({"p": "2"}, "'loss_kwargs.p': must be a number, got '2'"),
                            ({"p": -1}, "'loss_kwargs.p': must be > 0, got -1.0"),
                            ({"use_hard_margin": 1}, "'loss_kwargs.use_hard_margin': must be true or false, got 1")):
        assert load_error(tmp_path, {**raw, "loss_kwargs": {**raw["loss_kwargs"], **change}}).endswith(f"run config {problem}")
    incomplete = {**raw, "loss_kwargs": {key: value for key, value in raw["loss_kwargs"].items() if key != "delta"}}
    assert load_error(tmp_path, incomplete).endswith(
        "run config 'loss_kwargs.delta' is missing (the DAG writes every hyperparameter)")
    sft = complete_run_config("sft")
    assert load_error(tmp_path, {**sft, "loss_kwargs": {"p": 2.0}}).endswith(
        "run config 'loss_kwargs.p': method 'sft' takes none (give {})")


def test_max_prompt_length_must_be_smaller_than_max_length(tmp_path):
    raw = complete_run_config("slime", training={"max_length": 64, "max_prompt_length": 32})
    raw["training"]["max_prompt_length"] = 64
    assert load_error(tmp_path, raw).endswith(
        "run config 'training.max_prompt_length' (64) must be smaller than 'training.max_length' (64)")


def test_not_json_or_not_an_object(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{")
    with pytest.raises(RunConfigError, match=rf"^{path}: not valid JSON"):
        RunConfig.load(path)
    with pytest.raises(RunConfigError, match="must be a JSON object, got list"):
        RunConfig.from_dict([])


# ------------------------------------------------------------------------------------------- the schema


def test_the_sections_are_the_schemas_definitions():
    """RunConfig's typed sections have exactly the keys `$defs/run_config` declares through the schema's own
    definitions: `$defs/training` plus the job-wide keys, `$defs/lora`, `evaluation.probes`, `data.on_bad_rows`."""
    schema, root = run_config_schema(), load_schema()
    training = schema["properties"]["training"]["properties"]
    assert list(training) == [*root["$defs"]["training"]["properties"], "seed", "precision", "device", "num_gpus"]
    assert [field.name for field in dataclasses.fields(Training)] == list(training)
    lora = next(branch for branch in root["$defs"]["lora"]["oneOf"] if "properties" in branch)
    assert [field.name for field in dataclasses.fields(Lora)] == list(lora["properties"])
    probes = next(branch for branch in root["properties"]["evaluation"]["properties"]["probes"]["oneOf"]
                  if "properties" in branch)
    assert [field.name for field in dataclasses.fields(Probes)] == list(probes["properties"])
    assert [field.name for field in dataclasses.fields(RunConfig)] == list(schema["properties"]) == schema["required"]
    assert training["precision"]["enum"] == root["properties"]["precision"]["enum"]  # auto included


def test_schema_default_fills_the_nested_defaults():
    assert schema_default("lora") == {"r": 64, "alpha": 128, "dropout": 0.0, "modules_to_save": ["lm_head"],
                                      "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"]}


def test_the_offline_floor_delta_is_slimes_signature_default():
    from prefopt.evaluation.offline import default_slime_delta
    from prefopt.objectives import get_objective

    assert default_slime_delta() == get_objective("slime").defaults["delta"] == 1.25


# ------------------------------------------------------------------------------------------- imports


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_run_config_does_not_import_torch():
    result = run_python("import sys, prefopt.run_config as rc\n"
                        "rc.run_config_schema(); rc.schema_default('lora')\n"
                        "assert 'torch' not in sys.modules, 'torch imported'\n"
                        "assert 'prefopt.job' not in sys.modules")
    assert result.returncode == 0, result.stderr[-3000:]


def prefopt_imports() -> dict[str, set[str]]:
    """module -> the prefopt modules it imports anywhere (top level or inside a function), from the source."""
    graph = {}
    for path in sorted((REPO / "prefopt").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            imported |= {name for name in names if name.startswith("prefopt")}
        graph[module] = imported
    return {module: {name for name in imported if name in graph and name != module} for module, imported in graph.items()}


TRAINING_MODULES = ("prefopt.cli", "prefopt.job", "prefopt.trainer", "prefopt.sft", "prefopt.losses",
                    "prefopt.objectives", "prefopt.run_config", "prefopt.training_args", "prefopt.checkpoints",
                    "prefopt.probes", "prefopt.models")


def reachable(graph, start) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for name in graph[todo.pop()] - seen:
            seen.add(name)
            todo.append(name)
    return seen


def test_training_imports_point_down_with_no_cycle():
    """cli -> job -> trainer / sft -> losses -> objectives, counting the imports inside functions too:
    no prefopt module reaches itself, and neither trainer (nor anything below the job) imports the job."""
    graph = prefopt_imports()
    assert set(TRAINING_MODULES) <= set(graph)
    for module in graph:  # every prefopt module, the training ones included
        assert module not in reachable(graph, module), f"{module} imports itself through {sorted(reachable(graph, module))}"
    assert {"prefopt.trainer", "prefopt.sft", "prefopt.checkpoints"} <= reachable(graph, "prefopt.job")
    for module in ("prefopt.trainer", "prefopt.sft", "prefopt.losses", "prefopt.checkpoints", "prefopt.probes",
                   "prefopt.training_args", "prefopt.models", "prefopt.run_config"):
        assert not {"prefopt.job", "prefopt.cli"} & reachable(graph, module), module
    assert not {"torch", "transformers"} & {name.split(".")[0] for name in _third_party(REPO / "prefopt/run_config.py")}


def _third_party(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return names


def test_importing_the_trainer_does_not_import_the_job():
    result = run_python("import sys, prefopt.trainer, prefopt.sft\n"
                        "assert 'prefopt.job' not in sys.modules and 'prefopt.cli' not in sys.modules")
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_cli_fails_in_one_line_naming_the_file_and_key(tmp_path):
    raw = complete_run_config("slime")
    del raw["training"]["max_length"]
    path = written(tmp_path, raw)
    result = subprocess.run([sys.executable, str(REPO / "workflow/scripts/align.py"), "--run-config", str(path),
                             "--model", str(tmp_path), "--train", str(tmp_path / "none.jsonl"), "--out",
                             str(tmp_path / "out"), "--checkpoint-dir", str(tmp_path / "ckpt"), "--threads", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and errors[0].endswith(
        f"{path}: run config 'training.max_length' is missing (the DAG writes complete run configs)"), result.stderr
    assert "Traceback" not in result.stderr
