"""The experiment config: defaults filled from the JSON schema, then validated, with one-line errors.

    config = load_config(yaml.safe_load(open("config.yaml")), "schemas/config.schema.yaml")

Every default lives in the schema (`default:` keywords, draft 2020-12). Filling is generic: a
missing property that has a default (its own, or through `$ref` / `allOf`) gets a copy of it,
and every present or filled object is filled in turn through `properties`,
`additionalProperties`, `items`, `$ref`, `allOf` and the `oneOf`/`anyOf` branches whose type
fits the value (the `oneOf: [null, object]` pattern of `lora` and `judge`). So an object's
defaults fill only where that object is given or has a default itself; `lora: null` stays null.

A bad config raises `ConfigError` with one line naming the key path:
``lora.r: 0 is less than the minimum of 1``, ``unknown key 'foo' in models.smollm2 (known: ...)``,
``unknown method 'slme'; did you mean 'slime'?``.
"""

from __future__ import annotations

import copy
import difflib
import os
import sys
from typing import Any, Iterator

import jsonschema
import yaml
from jsonschema.exceptions import ValidationError, best_match

_UNSET = object()
_JSON_TYPES = {"null": type(None), "boolean": bool, "object": dict, "array": list, "string": str}


class ConfigError(ValueError):
    """A config that does not fit the schema; the message is one line naming the key."""


def load_schema(schema_path: str | os.PathLike) -> dict:
    with open(schema_path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def schema_with_objectives(schema: dict, modules: list[str] | None = None) -> dict:
    """A copy of `schema` whose `methods` (and `$defs/objectives`) hold one object per registered objective:
    the built-ins and those of `modules` (the config's `objectives:`), read from the loss signatures."""
    from prefopt.objectives import ObjectiveError, load_objectives

    if "methods" not in schema.get("properties", {}):
        return schema  # a schema without methods (tests' toy schemas)
    modules = [] if modules is None else modules
    if not isinstance(modules, list) or not all(isinstance(module, str) for module in modules):
        raise ConfigError(f"objectives: must be a list of module names, got {_short(modules)}")
    try:
        registry = load_objectives(modules)
    except ObjectiveError as error:
        raise ConfigError(str(error)) from None
    schema = copy.deepcopy(schema)
    definitions = schema["$defs"]["objectives"]
    for name, spec in sorted(registry.items()):
        definitions[name] = spec.json_schema()
        schema["properties"]["methods"]["properties"][name] = {"$ref": f"#/$defs/objectives/{name}"}
    return schema


def load_config(config: dict, schema_path: str | os.PathLike | dict) -> dict:
    """A copy of `config` with the schema's defaults filled in, validated; raises `ConfigError`.

    The objectives the config may name are the built-in ones and those its `objectives:` modules register."""
    schema = schema_path if isinstance(schema_path, dict) else load_schema(schema_path)
    schema = schema_with_objectives(schema, dict(config).get("objectives") or [])
    validator = jsonschema.Draft202012Validator(schema)
    resolved = copy.deepcopy(dict(config))
    fill_defaults(resolved, schema, root=schema)
    error = best_match(validator.iter_errors(resolved))
    if error is not None:
        raise ConfigError(error_message(error))
    return resolved


# ---------------------------------------------------------------------------------------------
# Defaults


def resolve_ref(ref: str, root: dict) -> dict:
    if not ref.startswith("#"):
        raise ValueError(f"only local $refs are supported, got {ref!r}")
    node: Any = root
    for part in filter(None, ref[1:].split("/")):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _fits_type(value: Any, schema: dict, root: dict) -> bool:
    """Whether `value` has a type `schema` allows (a schema without `type` allows any)."""
    schema = resolve_ref(schema["$ref"], root) if "$ref" in schema and "type" not in schema else schema
    types = schema.get("type")
    if types is None:
        return True
    for name in [types] if isinstance(types, str) else types:
        if name in ("number", "integer"):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return True
        elif isinstance(value, _JSON_TYPES[name]):
            return True
    return False


def _applicable(schema: dict, value: Any, root: dict) -> Iterator[dict]:
    """`schema` and every subschema that applies to `value` in place: `$ref`, `allOf`, fitting `oneOf`/`anyOf`."""
    yield schema
    if "$ref" in schema:
        yield from _applicable(resolve_ref(schema["$ref"], root), value, root)
    for sub in schema.get("allOf", []):
        yield from _applicable(sub, value, root)
    for keyword in ("oneOf", "anyOf"):
        for sub in schema.get(keyword, []):
            if _fits_type(value, sub, root):
                yield from _applicable(sub, value, root)


def _default(schema: dict, root: dict) -> Any:
    """The schema's own `default`, else one reached through `$ref` or `allOf`; `_UNSET` when none."""
    if "default" in schema:
        return schema["default"]
    if "$ref" in schema:
        found = _default(resolve_ref(schema["$ref"], root), root)
        if found is not _UNSET:
            return found
    for sub in schema.get("allOf", []):
        found = _default(sub, root)
        if found is not _UNSET:
            return found
    return _UNSET


def fill_defaults(value: Any, schema: dict, *, root: dict) -> Any:
    """Fill `value` in place with the defaults of `schema` (see the module docstring); returns it."""
    subschemas = list(_applicable(schema, value, root))
    if isinstance(value, dict):
        declared: dict[str, list[dict]] = {}
        for sub in subschemas:
            for key, prop in sub.get("properties", {}).items():
                declared.setdefault(key, []).append(prop)
        for key, props in declared.items():
            if key not in value:
                for prop in props:
                    default = _default(prop, root)
                    if default is not _UNSET:
                        value[key] = copy.deepcopy(default)
                        break
            if key in value:
                for prop in props:
                    fill_defaults(value[key], prop, root=root)
        for sub in subschemas:
            extra = sub.get("additionalProperties")
            if isinstance(extra, dict):
                for key in value.keys() - sub.get("properties", {}).keys():
                    fill_defaults(value[key], extra, root=root)
    elif isinstance(value, list):
        for sub in subschemas:
            if isinstance(sub.get("items"), dict):
                for item in value:
                    fill_defaults(item, sub["items"], root=root)
    return value


# ---------------------------------------------------------------------------------------------
# Messages


def key_path(path) -> str:
    """``lora.r``, ``ablations.components[0].name``; empty for the top level."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unknown_keys_message(error: ValidationError, where: str) -> str:
    known = sorted(error.schema.get("properties", {}))
    unknown = sorted(set(error.instance) - set(known))
    noun = "method" if where == "methods" else "key"
    place = "" if noun == "method" else (f" in {where}" if where else " at the top level")
    key = unknown[0]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    more = f" (and {len(unknown) - 1} more: {', '.join(map(repr, unknown[1:]))})" if len(unknown) > 1 else ""
    if close:
        return f"unknown {noun} {key!r}{place}; did you mean {close[0]!r}?{more}"
    return f"unknown {noun} {key!r}{place} (known: {', '.join(known)}){more}"


def error_message(error: ValidationError) -> str:
    """One line for the most relevant error: the key path, then what is wrong with it."""
    where = key_path(error.absolute_path)
    if error.validator == "additionalProperties" and error.validator_value is False:
        return _unknown_keys_message(error, where)
    if error.validator in ("oneOf", "anyOf") and error.context and all(
        sub.validator == "type" and not sub.relative_path for sub in error.context
    ):
        types = [sub.validator_value for sub in error.context]
        message = f"{_short(error.instance)} is not of type {' or '.join(map(repr, types))}"
    else:
        message = error.message
        instance = repr(error.instance)
        if message.startswith(instance) and len(instance) > 60:
            message = _short(error.instance) + message[len(instance):]
    return f"{where or 'config'}: {message}"


def resolve_workflow_config(config: dict, schema_path: str | os.PathLike) -> None:
    """Fill Snakemake's `config` in place with the defaults; a bad config exits with its one line.

    `sys.exit(message)` makes Snakemake print just ``config error: <message>`` (a raised
    exception would add the Snakefile's location and a traceback line).
    """
    try:
        config.update(load_config(config, schema_path))
    except ConfigError as error:
        sys.exit(f"config error: {error}")
