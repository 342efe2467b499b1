"""Complete run configs for tests, built the way the DAG builds them: schema defaults, then overrides."""

from __future__ import annotations

from pathlib import Path

from prefopt import plan
from prefopt.config_schema import load_config

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "schemas" / "config.schema.yaml"


def experiment_config(**overrides) -> dict:
    """A validated experiment config (defaults filled) with one model whose source is never read here."""
    raw = {"models": {"m": {"source": {"path": "unused"}}}, "data": {"source": "demo"}, "methods": {"slime": {}}}
    raw.update(overrides)
    return load_config(raw, SCHEMA)


def complete_run_config(method: str, *, training: dict | None = None, lora="default", loss_kwargs: dict | None = None,
                        on_bad_rows: str = "drop") -> dict:
    """`prefopt.plan.run_config` of a one-model config, with `training` overriding the stage's settings."""
    stage = "sft" if method == "sft" else "align"
    overrides = {stage: dict(training or {}), "data": {"source": "demo", "on_bad_rows": on_bad_rows}}
    if lora != "default":
        overrides["lora"] = lora
    # fp32, not the schema's `auto`: what a test trains must not depend on the CPU it runs on.
    config = experiment_config(precision="fp32", **overrides)
    if method != "sft":
        config["methods"] = {method: {}}
    return plan.run_config(config, "m", method, loss_kwargs)
