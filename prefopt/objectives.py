"""The objective registry: every preference objective, declared once, by one decorated function.

    from prefopt.objectives import Range, objective

    @objective("slime", label="SLIME (ours)", citation="Afanasyev & Iov, 2026")
    def slime_loss(chosen_logps, chosen_mask, rejected_logps, rejected_mask, *,
                   p: Annotated[float, Range(gt=0)] = 2.5, ...):
        ...

The function's keyword-only parameters with defaults are its hyperparameters: their types, ranges
(`Annotated[..., Range(...)]`) and defaults live in the signature and nowhere else. An objective
that takes the keyword-only `ref_chosen_logps` and `ref_rejected_logps` needs a reference model.
The config schema's `methods`, the plan's checks and labels, the run config's checks, the trainer
and the docs' method list all read this registry.

This module does not import torch: it holds metadata and checks. `load_objectives()` imports the
built-in objectives (prefopt.losses) and a config's own modules (`objectives: [my_losses]`), which
register theirs with the same decorator.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import importlib.util
import inspect
import math
import numbers
import os
import re
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

BUILTIN_MODULES = ("prefopt.losses",)
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")  # a run is `<name>-<hash>` (rules/common.smk's wildcard)
RESERVED_NAMES = ("sft", "base")  # the DAG's own runs
REFERENCE_ARGUMENTS = ("ref_chosen_logps", "ref_rejected_logps")
_HYPERPARAMETER_TYPES = (bool, int, float)


class ObjectiveError(ValueError):
    """A bad objective declaration, name or hyperparameter; the message is one line naming it."""


class UnknownObjectiveError(KeyError, ObjectiveError):
    """An unknown objective name. A KeyError (lookup) and a ValueError (bad config value) both."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownHyperparameterError(TypeError, ObjectiveError):
    """A keyword argument the objective does not take (a TypeError, as Python's own would be)."""


def _near_misses(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(sorted(known))})"


# --------------------------------------------------------------------------------------------
# Hyperparameters


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric hyperparameter: `ge`/`gt` below, `le`/`lt` above (None: unbounded)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def violation(self, value: float) -> str | None:
        for bound, holds, words in ((self.ge, value >= (self.ge or 0), ">="), (self.gt, value > (self.gt or 0), ">"),
                                    (self.le, value <= (self.le or 0), "<="), (self.lt, value < (self.lt or 0), "<")):
            if bound is not None and not holds:
                return f"must be {words} {bound}"
        return None

    def json_schema(self) -> dict:
        keywords = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}
        return {keywords[name]: getattr(self, name) for name in keywords if getattr(self, name) is not None}


@dataclass(frozen=True)
class Hyperparameter:
    """One keyword-only parameter of an objective: its name, type (bool, int or float), default and range."""

    name: str
    type: type
    default: bool | int | float
    range: Range = Range()

    def check(self, value, where: str | None = None):
        """`value` as this hyperparameter's type; a wrong type or range raises ObjectiveError naming `where`."""
        where = where or self.name
        if self.type is bool:
            if not isinstance(value, bool):
                raise ObjectiveError(f"{where}: must be true or false, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ObjectiveError(f"{where}: must be a number, got {value!r}")
        if self.type is int:
            if not float(value).is_integer():
                raise ObjectiveError(f"{where}: must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ObjectiveError(f"{where}: must be finite, got {value}")
        problem = self.range.violation(value)
        if problem:
            raise ObjectiveError(f"{where}: {problem}, got {value!r}")
        return value

    def json_schema(self) -> dict:
        kind = {bool: "boolean", int: "integer", float: "number"}[self.type]
        return {"type": kind, **(self.range.json_schema() if self.type is not bool else {})}


def format_value(value) -> str:
    """A hyperparameter's value as tables and figures show it: true/false, an int as is, a float with one
    decimal where that is exact (2.5, 1.0), else in `g` form (1.25, 1e-05)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    value = float(value)
    return f"{value:.1f}" if round(value, 1) == value else f"{value:g}"


def _hyperparameter(parameter: inspect.Parameter, namespace: dict, where: str) -> Hyperparameter:
    annotation = parameter.annotation
    if isinstance(annotation, str):  # `from __future__ import annotations`: evaluate only this one
        try:
            annotation = eval(annotation, namespace)  # noqa: S307 - the objective module's own annotation
        except Exception as error:
            raise ObjectiveError(f"{where}: cannot read the annotation {parameter.annotation!r} ({error})") from None
    bounds = Range()
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *extras = typing.get_args(annotation)
        bounds = next((extra for extra in extras if isinstance(extra, Range)), Range())
    if annotation is inspect.Parameter.empty:
        annotation = type(parameter.default)
    if annotation not in _HYPERPARAMETER_TYPES:
        raise ObjectiveError(f"{where}: a hyperparameter is a bool, int or float, got {annotation!r}")
    declared = Hyperparameter(parameter.name, annotation, parameter.default, bounds)
    declared.check(parameter.default, f"{where} (its default)")
    return declared


# --------------------------------------------------------------------------------------------
# Objectives


@dataclass(frozen=True)
class Objective:
    """A registered objective: the loss function and what the rest of the tool needs to know about it."""

    name: str
    fn: Callable = field(repr=False)
    label: str
    citation: str
    hyperparameters: tuple[Hyperparameter, ...]
    needs_reference: bool
    presets: Mapping[str, Mapping] = field(default_factory=dict, repr=False)
    module: str = ""

    @property
    def defaults(self) -> dict:
        return {hp.name: hp.default for hp in self.hyperparameters}

    def hyperparameter(self, name: str, where: str | None = None) -> Hyperparameter:
        for hp in self.hyperparameters:
            if hp.name == name:
                return hp
        raise UnknownHyperparameterError(
            f"{where or name}: {self.name!r} has no hyperparameter {name!r}"
            + _near_misses(name, [hp.name for hp in self.hyperparameters]))

    def check_kwargs(self, kwargs: Mapping, where: str | None = None) -> dict:
        """Each of `kwargs` checked against the signature (types, ranges); unknown names raise with a near miss."""
        where = where or self.name
        return {name: self.hyperparameter(name, f"{where}.{name}").check(value, f"{where}.{name}")
                for name, value in kwargs.items()}

    def resolve(self, settings: Mapping, where: str | None = None) -> dict:
        """Every hyperparameter: the defaults, then a named preset (`settings["preset"]`), then `settings`."""
        where = where or self.name
        settings = dict(settings)
        resolved = self.defaults
        preset = settings.pop("preset", None)
        if preset is not None:
            if preset not in self.presets:
                raise ObjectiveError(f"{where}.preset: unknown preset {preset!r} of {self.name!r}"
                                     + _near_misses(preset, self.presets))
            resolved.update(self.presets[preset])
        resolved.update(self.check_kwargs(settings, where))
        return resolved

    def json_schema(self) -> dict:
        """The config schema of `methods.<name>` (and of an ablation's overrides): one property per hyperparameter."""
        properties = {hp.name: hp.json_schema() for hp in self.hyperparameters}
        if self.presets:
            properties["preset"] = {"enum": sorted(self.presets)}
        return {"type": "object", "additionalProperties": False, "properties": properties,
                "description": f"{self.label} ({self.citation})"}


_REGISTRY: dict[str, Objective] = {}
REGISTRY: Mapping[str, Objective] = MappingProxyType(_REGISTRY)


def objective(name: str, *, label: str, citation: str, presets: Mapping[str, Mapping] | None = None):
    """Register the decorated loss function as objective `name` (see the module docstring).

    Its hyperparameter keywords are checked against their names, types and ranges on every call, so a
    bad or misspelt one fails naming the parameter whether the loss is called directly or through the registry.
    `presets` are named partial settings, each checked against the signature here.
    """

    def register(fn: Callable) -> Callable:
        where = f"objective {name!r} ({fn.__module__}.{fn.__qualname__})"
        if not NAME_PATTERN.fullmatch(str(name)) or name in RESERVED_NAMES:
            raise ObjectiveError(f"{where}: a name is lower-case letters, digits and _ (it starts run names), "
                                 f"and not one of {', '.join(RESERVED_NAMES)}")
        parameters = inspect.signature(fn).parameters
        keyword_only = [p for p in parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        references = [p.name for p in keyword_only if p.name in REFERENCE_ARGUMENTS]
        if references and len(references) != len(REFERENCE_ARGUMENTS):
            raise ObjectiveError(f"{where}: takes {references[0]} but not both of {', '.join(REFERENCE_ARGUMENTS)}")
        undefaulted = [p.name for p in keyword_only
                       if p.name not in REFERENCE_ARGUMENTS and p.default is inspect.Parameter.empty]
        if undefaulted:
            raise ObjectiveError(f"{where}: hyperparameter {undefaulted[0]!r} needs a default")
        hyperparameters = tuple(_hyperparameter(p, fn.__globals__, f"{where}: {p.name}")
                                for p in keyword_only if p.name not in REFERENCE_ARGUMENTS)

        tensors = set(parameters) - {hp.name for hp in hyperparameters}  # log-probs, masks, ref_* log-probs

        @functools.wraps(fn)
        def checked(*args, **kwargs):  # `spec` is the registered Objective below
            given_tensors = {key: kwargs.pop(key) for key in tensors & kwargs.keys()}
            return fn(*args, **spec.check_kwargs(kwargs), **given_tensors)

        spec = Objective(name=name, fn=checked, label=label, citation=citation, hyperparameters=hyperparameters,
                         needs_reference=bool(references), presets={}, module=fn.__module__)
        complete = {preset: MappingProxyType({**spec.defaults, **spec.check_kwargs(values, f"{where}: preset {preset!r}")})
                    for preset, values in (presets or {}).items()}
        spec = dataclasses.replace(spec, presets=MappingProxyType(complete))
        existing = _REGISTRY.get(name)
        if existing is not None and (existing.module, existing.fn.__qualname__) != (spec.module, fn.__qualname__):
            raise ObjectiveError(f"{where}: the name {name!r} is already registered by {existing.module}")
        _REGISTRY[name] = spec
        checked.objective = spec
        return checked

    return register


def get_objective(name: str) -> Objective:
    """The registered objective `name` (built-ins loaded first); unknown names raise with a near miss."""
    load_objectives()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownObjectiveError(f"unknown objective {name!r}" + _near_misses(str(name), _REGISTRY)) from None


# --------------------------------------------------------------------------------------------
# Loading objective modules


def module_source(module: str) -> Path:
    """The file of an importable module (`objectives: [my_losses]`), found on sys.path or in the working directory."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
        spec = importlib.util.find_spec(module)
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        raise ObjectiveError(f"objectives: cannot import {module!r} (not on PYTHONPATH or in the working directory)")
    return Path(spec.origin)


def import_source(path: str | os.PathLike, module: str | None = None):
    """Import an objective module from its file (a job gets the file the planner found), registering its objectives."""
    path = Path(path)
    module = module or path.stem
    if module in sys.modules:
        return sys.modules[module]
    parent = str(path.parent if path.name != "__init__.py" else path.parent.parent)
    if parent not in sys.path:
        sys.path.append(parent)  # its sibling modules import as they did for the planner
    return importlib.import_module(module)


def load_objectives(modules: Iterable[str] = ()) -> dict[str, Objective]:
    """Import the built-in objectives and `modules` (config `objectives:`); the registry afterwards."""
    for module in (*BUILTIN_MODULES, *modules):
        if module not in sys.modules:
            if module in BUILTIN_MODULES:
                importlib.import_module(module)
            else:
                try:
                    import_source(module_source(module), module)
                except ObjectiveError:
                    raise
                except Exception as error:  # the user's module failed to import: one line naming it
                    raise ObjectiveError(f"objectives: importing {module!r} failed: {type(error).__name__}: {error}") from error
    return dict(_REGISTRY)


def objective_sources(modules: Iterable[str]) -> dict[str, str]:
    """{objective name: source file} of the objectives `modules` register (a job imports these files)."""
    load_objectives(modules)
    files = {module: str(module_source(module)) for module in modules}
    return {name: files[spec.module] for name, spec in _REGISTRY.items() if spec.module in files}


# --------------------------------------------------------------------------------------------
# The docs' method list


def _range_text(hp: Hyperparameter) -> str:
    if hp.type is bool:
        return "true/false"
    bounds = [f"{words} {value:g}" for words, value in ((">=", hp.range.ge), (">", hp.range.gt),
                                                         ("<=", hp.range.le), ("<", hp.range.lt)) if value is not None]
    return ", ".join(bounds) or "any"


def markdown_table(modules: Iterable[str] = ()) -> str:
    """The built-in objectives and those of `modules` as a markdown table (docs/objectives.md holds the
    built-ins' table; a test keeps it equal to this)."""
    modules = tuple(modules)
    lines = ["| method | label | reference model | hyperparameters (default; range) | source |",
             "|---|---|---|---|---|"]
    for name, spec in sorted(load_objectives(modules).items()):
        if spec.module not in (*BUILTIN_MODULES, *modules):
            continue
        hps = "; ".join(f"`{hp.name}` = {str(hp.default).lower() if hp.type is bool else f'{hp.default:g}'} "
                        f"({_range_text(hp)})" for hp in spec.hyperparameters)
        lines.append(f"| `{name}` | {spec.label} | {'yes' if spec.needs_reference else 'no'} | {hps} | {spec.citation} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m prefopt.objectives [my_losses ...]: the method table
    from prefopt import objectives  # the registry the losses register in (this file runs as __main__)

    sys.stdout.write(objectives.markdown_table(sys.argv[1:]))
