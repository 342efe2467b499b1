"""prefopt.config_schema: defaults filled from the schema, and one-line config errors naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from prefopt.config_schema import ConfigError, fill_defaults, load_config, schema_with_objectives
from prefopt.objectives import load_objectives

REPO = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO / "schemas" / "config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
MINIMAL = {"models": {"m": {"source": {"path": "/models/m"}}}, "data": {"source": "demo"}, "methods": {"dpo": {}}}


def error_of(edit) -> str:
    config = copy.deepcopy(MINIMAL)
    edit(config)
    with pytest.raises(ConfigError) as raised:
        load_config(config, SCHEMA_PATH)
    return str(raised.value)


def test_unknown_top_level_key():
    known = ", ".join(sorted(SCHEMA["properties"]))
    assert error_of(lambda c: c.update(foo=1)) == f"unknown key 'foo' at the top level (known: {known})"
    assert error_of(lambda c: c.update(seeed=1)) == "unknown key 'seeed' at the top level; did you mean 'seed'?"


def test_unknown_nested_key_names_its_parent():
    known = ", ".join(sorted(SCHEMA["$defs"]["model"]["properties"]))
    assert error_of(lambda c: c["models"]["m"].update(foo=1)) == f"unknown key 'foo' in models.m (known: {known})"
    assert (error_of(lambda c: c.update(sft={"lerning_rate": 1e-4}))
            == "unknown key 'lerning_rate' in sft; did you mean 'learning_rate'?")


def test_lora_r_zero_names_r():
    assert error_of(lambda c: c.update(lora={"r": 0, "alpha": 16})) == "lora.r: 0 is less than the minimum of 1"


def test_unknown_method_suggests_the_near_miss():
    assert error_of(lambda c: c["methods"].update(slme={})) == "unknown method 'slme'; did you mean 'slime'?"
    known = ", ".join(sorted(load_objectives()))  # the registry: the built-ins, and any a test registered
    assert {"dpo", "rpo", "slime"} <= set(load_objectives())
    assert error_of(lambda c: c["methods"].update(kto={})) == f"unknown method 'kto' (known: {known})"


def test_wrong_types():
    assert error_of(lambda c: c.update(sft={"learning_rate": "fast"})) == "sft.learning_rate: 'fast' is not of type 'number'"
    assert error_of(lambda c: c.update(lora=5)) == "lora: 5 is not of type 'null' or 'object'"
    assert (error_of(lambda c: c["data"].update(on_bad_rows="ignore"))
            == "data.on_bad_rows: 'ignore' is not one of ['drop', 'error']")
    assert error_of(lambda c: c.pop("models")) == "config: 'models' is a required property"


def test_long_values_are_shortened_to_one_short_line():
    message = error_of(lambda c: c["data"].update(demo=list(range(200))))
    assert message.startswith("data.demo: [0, 1, 2") and message.endswith("... is not of type 'object'")
    assert len(message) < 120 and "\n" not in message


# --- defaults ----------------------------------------------------------------------------------

TOY_SCHEMA = {
    "$defs": {
        "rate": {"type": "number", "default": 0.5},
        "adapter": {"oneOf": [{"type": "null"},
                              {"type": "object", "properties": {"r": {"type": "integer"},
                                                                "dropout": {"type": "number", "default": 0.0}}}]},
        "stage": {"type": "object", "properties": {"lr": {"$ref": "#/$defs/rate"}, "steps": {"type": "integer"}}},
    },
    "type": "object",
    "properties": {
        "seed": {"type": "integer", "default": 0},
        "adapter": {"$ref": "#/$defs/adapter", "default": {"r": 8}},
        "judge": {"$ref": "#/$defs/adapter"},
        "train": {"allOf": [{"$ref": "#/$defs/stage"}], "default": {},
                  "properties": {"steps": {"default": 10}}},
        "optional_block": {"type": "object", "properties": {"x": {"type": "integer", "default": 1}}},
        "models": {"type": "object", "additionalProperties": {"$ref": "#/$defs/stage"}},
        "runs": {"type": "array", "items": {"$ref": "#/$defs/stage"}},
    },
}


def test_fill_defaults_follows_refs_allof_oneof_and_nesting():
    filled = load_config({"models": {"a": {}}, "runs": [{"steps": 3}]}, TOY_SCHEMA)
    assert filled == {
        "seed": 0,
        "adapter": {"r": 8, "dropout": 0.0},  # the object default, then its own properties' defaults
        "train": {"steps": 10, "lr": 0.5},    # default {} filled through allOf -> $ref
        "models": {"a": {"lr": 0.5}},         # additionalProperties
        "runs": [{"steps": 3, "lr": 0.5}],    # items
    }  # no "judge" (no default) and no "optional_block" (absent, no default of its own)
    assert load_config({"adapter": None, "judge": {"r": 2}, "optional_block": {}}, TOY_SCHEMA) == {
        "seed": 0, "adapter": None, "judge": {"r": 2, "dropout": 0.0}, "optional_block": {"x": 1},
        "train": {"steps": 10, "lr": 0.5}}
    given = {"seed": 3, "adapter": {"r": 4, "dropout": 0.1}}
    assert load_config(given, TOY_SCHEMA)["adapter"] == {"r": 4, "dropout": 0.1}
    assert given == {"seed": 3, "adapter": {"r": 4, "dropout": 0.1}}  # the input is not modified
    assert fill_defaults(5, TOY_SCHEMA, root=TOY_SCHEMA) == 5  # a wrong type is left for validation


def test_real_schema_defaults_give_complete_stage_settings():
    resolved = load_config(MINIMAL, SCHEMA_PATH)
    jsonschema.Draft202012Validator(schema_with_objectives(SCHEMA)).validate(resolved)
    training_keys = set(SCHEMA["$defs"]["training"]["properties"])
    assert set(resolved["sft"]) == set(resolved["align"]) == training_keys
    # A model gets its own keys' defaults, but its per-stage overrides get none.
    assert resolved["models"]["m"] == {**MINIMAL["models"]["m"], "enabled": True, "chat_template": None}
    assert resolved["lora"]["r"] >= 1 and "target_modules" in resolved["lora"]
    assert load_config({**MINIMAL, "lora": None}, SCHEMA_PATH)["lora"] is None
    assert load_config(resolved, SCHEMA_PATH) == resolved  # filling is idempotent
