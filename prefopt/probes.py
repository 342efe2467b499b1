"""Held-out probes during training: every k optimizer steps, score a fixed set of held-out pairs.

Every alignment run of a model probes the same pairs (the first `pairs` rows of the held-out
split), at step 0 (the starting SFT model) and then every `every_steps` steps, so trajectories can
be compared across methods and seeds as differences from SFT with paired uncertainty. Each probe
appends one record to the job's metrics file (so a resumed job keeps exactly the probes up to its
checkpoint):

    {"step": 8, "probe": {"chosen_logp_mean": ..., "rejected_logp_mean": ..., "margin_mean": ...,
                          "rejected_token_logp_floor": ..., "preference_accuracy": ...,
                          "chosen": [l̄_w per pair], "rejected": [l̄_l per pair]}}

l̄_w, l̄_l, Δ and the rejected-token floor are `prefopt.evaluation.offline`'s (the paper's appendix A
quantities). Only the main process probes; the others wait for it at the next collective.
"""

from __future__ import annotations

import logging
import os

from prefopt.io import append_jsonl
from prefopt.run_config import RunConfig

logger = logging.getLogger(__name__)

PROBE_KEYS = ("chosen_logp_mean", "rejected_logp_mean", "margin_mean", "rejected_token_logp_floor",
              "preference_accuracy")


def probe_records(records: list[dict]) -> list[dict]:
    """The probe records of a metrics file, in step order."""
    return sorted((r for r in records if "probe" in r), key=lambda r: r["step"])


def score_probe(model, tokenizer, rows: list[dict], *, step: int, metrics_path: str | os.PathLike,
                max_length: int, max_prompt_length: int, batch_size: int) -> dict:
    """Score the probe pairs with `model` and append the record for `step` to `metrics_path`."""
    from prefopt.evaluation.offline import evaluate_offline

    summary, per_example = evaluate_offline(model, tokenizer, rows, n_resamples=1, max_length=max_length,
                                            max_prompt_length=max_prompt_length, batch_size=batch_size,
                                            entropy=False)  # not a probe metric: no extra LM-head pass
    record = {key: summary[key] for key in PROBE_KEYS}
    record["chosen"] = [example["chosen_logp_mean"] for example in per_example]
    record["rejected"] = [example["rejected_logp_mean"] for example in per_example]
    append_jsonl(metrics_path, {"step": step, "probe": record})
    logger.info("probe at step %d: chosen %.4f rejected %.4f margin %.4f floor %.3f", step,
                record["chosen_logp_mean"], record["rejected_logp_mean"], record["margin_mean"],
                record["rejected_token_logp_floor"])
    return record


def probe_callback(tokenizer, rows: list[dict], run_config: RunConfig, metrics_path: str | os.PathLike, *,
                   tracker=None):
    """A TrainerCallback scoring the run config's probe pairs at step 0 and every `probes.every_steps`
    optimizer steps (main process) into `metrics_path`, and their means as `probe/<key>` at that step
    into `tracker` (prefopt.trackers) when given.

    The pairs are the first `probes.pairs` of `rows`, those that fit the run's length limits (the
    others are dropped, as bad held-out rows are); they are scored with the run's `max_length`,
    `max_prompt_length` and `per_device_eval_batch_size`."""
    from transformers import TrainerCallback

    from prefopt.data import validate_rows

    probes, training = run_config.probes, run_config.training
    if probes is None:
        raise ValueError("probe_callback: the run config has no probes")
    limits = {"max_length": training.max_length, "max_prompt_length": training.max_prompt_length}
    rows, _ = validate_rows(rows[:probes.pairs], tokenizer=tokenizer, **limits, on_bad="drop")
    limits.update(metrics_path=metrics_path, batch_size=training.per_device_eval_batch_size)

    def probe(model, step: int) -> None:
        record = score_probe(model, tokenizer, rows, step=step, **limits)
        if tracker is not None:
            tracker.log({f"probe/{key}": record[key] for key in PROBE_KEYS}, step)

    class ProbeCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero and state.global_step == 0:  # a resumed job has its step-0 probe
                probe(model, 0)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero and state.global_step % probes.every_steps == 0:
                probe(model, state.global_step)

    return ProbeCallback()
