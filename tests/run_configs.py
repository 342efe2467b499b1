"""Complete run configs for tests, built the way the DAG builds them: schema defaults, then overrides."""

from __future__ import annotations

from pathlib import Path

from prefopt import plan
from prefopt.config_schema import load_config
from prefopt.run_config import RunConfig

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "schemas" / "config.schema.yaml"


def experiment_config(**overrides) -> dict:
    """A validated experiment config (defaults filled) with one model whose source is never read here."""
    raw = {"models": {"m": {"source": {"path": "unused"}}}, "data": {"source": "demo"}, "methods": {"slime": {}}}
    raw.update(overrides)
    return load_config(raw, SCHEMA)


def complete_run_config(method: str, *, training: dict | None = None, lora="default", loss_kwargs: dict | None = None,
                        on_bad_rows: str = "drop") -> dict:
    """`prefopt.plan.run_config` of a one-model config, with `training` overriding the stage's settings:
    the run-config file's JSON object (`checked_run_config` gives the RunConfig a job reads from it)."""
    stage = "sft" if method == "sft" else "align"
    overrides = {stage: dict(training or {}), "data": {"source": "demo", "on_bad_rows": on_bad_rows}}
    if lora != "default":
        overrides["lora"] = lora
    # fp32, not the schema's `auto`: what a test trains must not depend on the CPU it runs on.
    config = experiment_config(precision="fp32", **overrides)
    if method != "sft":
        config["methods"] = {method: {}}
    return plan.run_config(config, "m", method, loss_kwargs)


def checked_run_config(method: str, *, probes: dict | None = None, precision: str | None = None, **settings) -> RunConfig:
    """The `RunConfig` a job reads from `complete_run_config(method, **settings)`'s file; `probes` and
    `precision` replace the file's (the plan writes the evaluation's probes and the job-wide precision)."""
    raw = complete_run_config(method, **settings)
    if probes is not None:
        raw["probes"] = probes
    if precision is not None:
        raw["training"]["precision"] = precision
    return RunConfig.from_dict(raw)
