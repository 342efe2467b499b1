"""The run config: one small JSON file per training job, written complete by the DAG (prefopt.plan).

Every hyperparameter of an `sft` or `align` job reaches it through this file, never through the
global config, so Snakemake reruns exactly the jobs whose settings changed. A job reads it once,
as a frozen `RunConfig`:

    run_config = RunConfig.load("results/smollm2/runs/slime-1a2b.json")
    run_config.training.max_length, run_config.lora.r, run_config.loss_kwargs["p"]
    run_config.to_dict()        # the file's JSON object, exactly (the job's identity hashes it)

Its shape is the schema's `$defs/run_config` (schemas/config.schema.yaml), which names the schema's
own definitions: `training` is `$defs/training` plus the job-wide keys (seed, precision, device,
num_gpus), `lora` is `$defs/lora` (null: full fine-tuning), `probes` is `evaluation.probes` (null:
none). The file is checked against it once, here: every declared key must be present and no other
(this module fills in nothing; the defaults live in the schema alone), `method` must be a registered
objective (prefopt.objectives) or "sft", `loss_kwargs` must hold every hyperparameter of that
objective, each checked against the loss signature, and max_prompt_length < max_length. A bad file
raises `RunConfigError`, one line naming the file and the key.

This module does not import torch (the TrainingArguments, device and thread helpers are in
prefopt.training_args).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"
SCHEMA_DEFINITION = "run_config"  # $defs/run_config
_ANNOTATIONS = frozenset({"description", "default", "title", "$comment", "examples"})


class RunConfigError(ValueError):
    """A run config that does not match `$defs/run_config`; the message is one line naming the key."""


# ------------------------------------------------------------------------------------------- sections
# Typed, frozen views of the file's objects. Their fields are checked against the schema's run-config
# definition when it is first read (`run_config_schema`), so a key added to the schema without a field
# here (or the reverse) fails at once, naming it.


@dataclass(frozen=True)
class Training:
    """A stage's settings (`$defs/training`) and the job-wide keys."""

    learning_rate: float
    lr_scheduler_type: str
    warmup_ratio: float
    max_grad_norm: float | None  # null: no clipping (paper, section 4.1)
    num_train_epochs: float
    max_steps: int
    per_device_train_batch_size: int
    per_device_eval_batch_size: int
    gradient_accumulation_steps: int
    save_steps: int
    save_total_limit: int | None
    logging_steps: int
    max_length: int
    max_prompt_length: int
    gradient_checkpointing: bool
    optim: str
    weight_decay: float
    seed: int
    precision: str  # auto | fp32 | bf16; auto is resolved on the job's node (prefopt.job.resolve_job_precision)
    device: str
    num_gpus: int


@dataclass(frozen=True)
class Lora:
    """`$defs/lora`: the adapter (the paper's Table 1 values are the schema's defaults)."""

    r: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]
    modules_to_save: tuple[str, ...] | None


@dataclass(frozen=True)
class Data:
    on_bad_rows: str  # drop | error


@dataclass(frozen=True)
class Probes:
    """`evaluation.probes`: held-out probes every `every_steps` steps on the first `pairs` pairs (prefopt.probes)."""

    every_steps: int
    pairs: int


_SECTIONS = {"training": Training, "lora": Lora, "data": Data, "probes": Probes}


def _frozen(value):
    return tuple(_frozen(item) for item in value) if isinstance(value, list) else value


def _thawed(value):
    return [_thawed(item) for item in value] if isinstance(value, tuple) else value


def _section(cls, values: Mapping | None):
    return None if values is None else cls(**{name: _frozen(value) for name, value in values.items()})


def _section_dict(section) -> dict | None:
    if section is None:
        return None
    return {field.name: _thawed(getattr(section, field.name)) for field in dataclasses.fields(section)}


@dataclass(frozen=True)
class RunConfig:
    """A checked run config (build it with `from_dict` or `load`, which check; the constructor does not)."""

    method: str  # a registered objective (prefopt.objectives) or "sft"
    loss_kwargs: Mapping[str, bool | int | float]  # every hyperparameter of the objective; empty for sft
    training: Training
    lora: Lora | None  # None: full fine-tuning
    data: Data
    probes: Probes | None  # None: no probes

    @classmethod
    def from_dict(cls, raw: Any, *, where: str | None = None) -> RunConfig:
        """Check `raw` (a run config's JSON object) and freeze it; `where` (a file name) prefixes errors."""
        try:
            check(raw)
        except RunConfigError as error:
            raise RunConfigError(f"{where}: {error}" if where else str(error)) from None
        values = {name: _section(_SECTIONS[name], value) if name in _SECTIONS else copy.deepcopy(value)
                  for name, value in raw.items()}
        return cls(**{**values, "loss_kwargs": MappingProxyType(values["loss_kwargs"])})

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunConfig:
        """Read and check a run-config JSON file (errors name the file and the key)."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise RunConfigError(f"{path}: not valid JSON ({error})") from None
        return cls.from_dict(raw, where=str(path))

    def to_dict(self) -> dict:
        """The run config's JSON object, exactly as it was read (lists, ints and floats as in the file)."""
        raw = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in _SECTIONS:
                raw[field.name] = _section_dict(value)
            else:  # method, loss_kwargs
                raw[field.name] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)
        return raw

    def to_json(self) -> str:
        """The canonical JSON text (sorted keys) that the job's identity hashes (prefopt.job.job_identity)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def with_training(self, **changes) -> RunConfig:
        """A checked copy with some `training` values replaced (e.g. `precision` resolved on the job's node)."""
        raw = self.to_dict()
        raw["training"].update(changes)
        return RunConfig.from_dict(raw)

    @property
    def is_sft(self) -> bool:
        return self.method == "sft"

    def __hash__(self) -> int:  # loss_kwargs is a read-only mapping, not hashable itself
        return hash(self.to_json())


# ------------------------------------------------------------------------------------------- the schema


@functools.lru_cache(maxsize=None)
def load_schema() -> dict:
    """schemas/config.schema.yaml (read once)."""
    import yaml

    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def schema_default(key: str):
    """The experiment config's default for its top-level `key`, completed by the schema's nested defaults
    (e.g. "lora": the paper's Table 1 adapter with its target modules)."""
    from prefopt.config_schema import fill_defaults

    schema = load_schema()
    declared = schema["properties"][key]
    return fill_defaults(copy.deepcopy(declared["default"]), declared, root=schema)


def _inlined(node: dict, root: dict) -> dict:
    """`node` with every `$ref` replaced by the definition it names (the run-config schema has no cycles)."""
    if "$ref" in node:
        from prefopt.config_schema import resolve_ref

        target = _inlined(resolve_ref(node["$ref"], root), root)
        rest = {key: value for key, value in node.items() if key != "$ref"}
        node = {**target, **rest} if set(rest) <= _ANNOTATIONS else {"allOf": [target], **rest}
    node = dict(node)
    if "properties" in node:
        node["properties"] = {name: _inlined(sub, root) for name, sub in node["properties"].items()}
    for keyword in ("allOf", "anyOf", "oneOf"):
        if keyword in node:
            node[keyword] = [_inlined(sub, root) for sub in node[keyword]]
    for keyword in ("items", "additionalProperties", "not"):
        if isinstance(node.get(keyword), dict):
            node[keyword] = _inlined(node[keyword], root)
    return node


def _closed(node: dict) -> dict:
    """Every object that declares properties requires all of them and allows no other; an `allOf` of such
    objects is one object with the keys of all (`$defs/training` is closed, the job-wide keys join it)."""
    node = dict(node)
    parts = node.get("allOf", [])
    if parts and all("properties" in part for part in parts):
        del node["allOf"]
        node["type"] = "object"
        node["properties"] = {name: sub for part in parts for name, sub in part["properties"].items()}
    if "properties" in node:
        node["properties"] = {name: _closed(sub) for name, sub in node["properties"].items()}
        node["additionalProperties"] = False
        node["required"] = list(node["properties"])
    for keyword in ("allOf", "anyOf", "oneOf"):
        if keyword in node:
            node[keyword] = [_closed(sub) for sub in node[keyword]]
    return node


def _object_schema(node: dict) -> dict:
    """The object branch of a `oneOf: [null, object]` (or the node itself)."""
    if "properties" in node:
        return node
    return next(sub for sub in node.get("oneOf", []) if "properties" in sub)


@functools.lru_cache(maxsize=None)
def run_config_schema() -> dict:
    """`$defs/run_config`, self-contained (its `$ref`s inlined) and closed (every key required, no other)."""
    root = load_schema()
    schema = _closed(_inlined(root["$defs"][SCHEMA_DEFINITION], root))
    declared = {"run config": (RunConfig, schema)}
    declared.update({name: (cls, _object_schema(schema["properties"][name])) for name, cls in _SECTIONS.items()})
    for name, (cls, section) in declared.items():
        fields, keys = [field.name for field in dataclasses.fields(cls)], list(section["properties"])
        if set(fields) != set(keys):
            raise RuntimeError(
                f"prefopt.run_config.{cls.__name__} has fields {sorted(set(fields) - set(keys))} that {SCHEMA_PATH.name} "
                f"$defs/{SCHEMA_DEFINITION} ({name}) does not declare, and lacks {sorted(set(keys) - set(fields))}")
    return schema


@functools.lru_cache(maxsize=None)
def _validator():
    import jsonschema

    return jsonschema.Draft202012Validator(run_config_schema())


# ------------------------------------------------------------------------------------------- checks


def _key(path) -> str:
    return ".".join(str(part) for part in path)


def _relevance(error) -> tuple:
    # The deepest error first; at one depth an unknown key (often a misspelt one) before a missing one.
    return len(error.absolute_path), error.validator == "additionalProperties", error.validator == "required"


def _leaves(error):
    """The errors that say what is wrong: inside a `oneOf`/`anyOf` (`lora`, `probes`: null or an object),
    those of the branches whose type the value has, not "is not of type 'null'"."""
    if error.validator in ("oneOf", "anyOf") and error.context:
        fitting = [sub for sub in error.context if not (sub.validator == "type" and not sub.relative_path)]
        if fitting:
            for sub in fitting:
                yield from _leaves(sub)
            return
    yield error


def _message(error) -> str:
    where = _key(error.absolute_path)
    prefix = f"{where}." if where else ""
    if error.validator == "required":
        missing = [key for key in error.validator_value if key not in error.instance]
        return f"run config '{prefix}{missing[0]}' is missing (the DAG writes complete run configs)"
    if error.validator == "additionalProperties":
        known = list(error.schema.get("properties", {}))
        unknown = [key for key in error.instance if key not in known]
        close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
        return f"run config '{prefix}{unknown[0]}': unknown key ({hint})"
    if error.validator in ("oneOf", "anyOf") and error.context:
        types = " or ".join(repr(sub.validator_value) for sub in error.context if sub.validator == "type")
        return f"run config '{where}': {error.instance!r} is not of type {types}"
    return f"run config '{where or '(top level)'}': {error.message}"


def check(raw: Any) -> None:
    """Raise `RunConfigError` (one line naming the first bad key) unless `raw` is a complete, valid run config."""
    if not isinstance(raw, dict):
        raise RunConfigError(f"run config must be a JSON object, got {type(raw).__name__}")
    errors = [leaf for error in _validator().iter_errors(raw) for leaf in _leaves(error)]
    if errors:
        raise RunConfigError(_message(max(errors, key=_relevance)))
    _check_loss_kwargs(raw["method"], raw["loss_kwargs"])
    training = raw["training"]
    if training["max_prompt_length"] >= training["max_length"]:
        raise RunConfigError(
            f"run config 'training.max_prompt_length' ({training['max_prompt_length']}) must be smaller than "
            f"'training.max_length' ({training['max_length']})")


def _check_loss_kwargs(method: str, loss_kwargs: dict) -> None:
    """`loss_kwargs` against the objective's signature (prefopt.objectives): known, well-typed, in range, complete."""
    from prefopt.objectives import ObjectiveError, UnknownObjectiveError, get_objective

    if method == "sft":
        if loss_kwargs:
            raise RunConfigError(f"run config 'loss_kwargs.{next(iter(loss_kwargs))}': method 'sft' takes none (give {{}})")
        return
    try:
        objective = get_objective(method)
    except UnknownObjectiveError as error:
        raise RunConfigError(f"run config 'method': {error} (or 'sft')") from None
    try:
        objective.check_kwargs(loss_kwargs, "loss_kwargs")
    except ObjectiveError as error:  # "loss_kwargs.<name>: <problem>"
        key, _, problem = str(error).partition(": ")
        raise RunConfigError(f"run config '{key}': {problem}") from None
    missing = [name for name in objective.defaults if name not in loss_kwargs]
    if missing:
        raise RunConfigError(f"run config 'loss_kwargs.{missing[0]}' is missing (the DAG writes every hyperparameter)")
