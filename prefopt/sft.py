"""Supervised fine-tuning (paper, section 4.1, stage 1) through TRL's SFTTrainer.

The SFT split's chosen conversations are trained with cross-entropy on the assistant completion
only: each row is tokenized exactly as the alignment stage tokenizes it (`prefopt.logprobs`: prompt =
chat template with the generation prompt, completion = assistant text + the template's end-of-turn
token) and handed to SFTTrainer pre-tokenized with a `completion_mask` and `completion_only_loss=True`.
This works for every chat template; TRL's own `assistant_only_loss` would need `{% generation %}`
markers that ChatML/Gemma/Llama-3 templates do not have.

At the end the LoRA adapter is merged into the base weights and a full model directory
(safetensors + tokenizer with the same chat template) is published atomically into `out_dir`,
with `metrics.jsonl` and `summary.json`. The alignment stage starts from that directory.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from tqdm.auto import tqdm

from prefopt.logprobs import completion_ids_from_template

logger = logging.getLogger(__name__)


def tokenize_sft_row(tokenizer, row: dict, *, max_length: int, max_prompt_length: int) -> dict:
    """`{"input_ids", "completion_mask"}` for a row's chosen conversation (prompt left-truncated,
    completion right-truncated to fit `max_length`)."""
    from prefopt.data import chosen_text, prompt_messages

    messages = prompt_messages(row)
    prompt_ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    completion_ids = completion_ids_from_template(tokenizer, messages, chosen_text(row), prompt_ids)
    prompt_ids = prompt_ids[-max_prompt_length:]
    completion_ids = completion_ids[: max_length - len(prompt_ids)]
    return {"input_ids": prompt_ids + completion_ids,
            "completion_mask": [0] * len(prompt_ids) + [1] * len(completion_ids)}


def train_sft(run_config: dict, model_dir, train_rows: list[dict], out_dir, checkpoint_dir,
              eval_rows: list[dict] | None = None) -> dict:
    """Run the SFT job from a validated run config (method "sft"); returns the summary.

    Resumes from the newest complete checkpoint in `checkpoint_dir`. Writes `out_dir/` (merged model
    files at its top level, `metrics.jsonl`, `summary.json`, `data_report.json`) atomically; only the
    main process writes.
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from prefopt.data import write_json
    from prefopt.models import apply_lora, load_model
    from prefopt.run_config import training_arguments_kwargs
    from prefopt.trainer import (
        MetricsFileCallback,
        _read_metric_records,
        _staging_dir,
        _write_text_atomic,
        last_complete_checkpoint,
        prepare_metrics_file,
        prepare_run,
        publish_dir,
    )

    if run_config["method"] != "sft":
        raise ValueError(f"train_sft: run config 'method' is {run_config['method']!r}, expected 'sft'")
    training = run_config["training"]
    out_dir, checkpoint_dir = Path(out_dir), Path(checkpoint_dir)
    started = time.time()
    device, precision, tokenizer, good_rows, data_report, eval_rows = prepare_run(
        run_config, model_dir, train_rows, eval_rows, caller="train_sft")

    def tokenized(rows, name):
        return Dataset.from_list([
            tokenize_sft_row(tokenizer, row, max_length=training["max_length"],
                             max_prompt_length=training["max_prompt_length"])
            for row in tqdm(rows, desc=f"tokenize {name} conversations", disable=len(rows) < 1000)
        ])

    train_dataset = tokenized(good_rows, "train")
    eval_dataset = None
    if eval_rows:
        eval_dataset = tokenized(eval_rows, "eval")

    model = apply_lora(load_model(str(model_dir), precision), run_config["lora"])
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = checkpoint_dir / "metrics.jsonl"
    kwargs = training_arguments_kwargs(run_config, checkpoint_dir)
    args = SFTConfig(**kwargs, max_length=training["max_length"], completion_only_loss=True, packing=False,
                     dataset_kwargs={})
    if args.activation_checkpointing and run_config["lora"] is not None:
        model.enable_input_require_grads()
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, callbacks=[MetricsFileCallback(metrics_path)])

    resume = last_complete_checkpoint(checkpoint_dir)
    logger.info("resuming from %s", Path(resume).name) if resume else logger.info(
        "no checkpoint in %s: starting from step 0", checkpoint_dir)
    if trainer.is_world_process_zero():
        prepare_metrics_file(metrics_path, resume)
    trainer.accelerator.wait_for_everyone()
    train_output = trainer.train(resume_from_checkpoint=resume)
    eval_metrics = trainer.evaluate() if eval_dataset is not None else {}

    summary = {}
    staging = _staging_dir(out_dir)
    if trainer.is_world_process_zero():
        if staging.exists():
            shutil.rmtree(staging)
        final_model = trainer.accelerator.unwrap_model(trainer.model)
        if run_config["lora"] is not None:
            # Merge LoRA into the base weights: the alignment stage starts from a plain model directory.
            final_model = final_model.merge_and_unload()
        # SFTTrainer patched `forward` on the instance (fused LM head); the saved files are unaffected.
        output_embeddings, input_embeddings = final_model.get_output_embeddings(), final_model.get_input_embeddings()
        if output_embeddings is not None and output_embeddings.weight is not input_embeddings.weight:
            # A LoRA run with lm_head in modules_to_save trains its own copy of a tied head; saved as tied,
            # it would be replaced by the input embeddings on load.
            final_model.config.tie_word_embeddings = False
            if hasattr(final_model.config, "get_text_config"):
                final_model.config.get_text_config().tie_word_embeddings = False
        final_model.config.use_cache = True
        final_model.generation_config.eos_token_id = tokenizer.eos_token_id
        final_model.generation_config.pad_token_id = tokenizer.pad_token_id
        final_model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        source_info = Path(model_dir) / "prefopt_source.json"
        if source_info.exists():
            shutil.copy(source_info, staging / "prefopt_source.json")
        records = _read_metric_records(metrics_path)
        _write_text_atomic(staging / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        write_json(staging / "data_report.json", data_report)
        summary = {
            "method": "sft",
            "model_dir": str(model_dir),
            "merged_lora": run_config["lora"] is not None,
            "global_step": trainer.state.global_step,
            "epoch": trainer.state.epoch,
            "train_runtime_s": train_output.metrics.get("train_runtime"),
            "job_runtime_s": time.time() - started,
            "train_loss": train_output.training_loss,
            "final_metrics": next((r for r in reversed(records) if "loss" in r), {}),
            "eval_metrics": eval_metrics,
            "resumed_from": Path(resume).name if resume else None,
            "num_train_rows": len(good_rows),
            "num_dropped_rows": data_report["dropped"],
            "loss_on": "assistant completion only (prompt tokens masked)",
            "precision": precision,
            "device": device,
            "world_size": trainer.accelerator.num_processes,
            "run_config": run_config,
        }
        write_json(staging / "summary.json", summary)
        publish_dir(staging, out_dir)
        logger.info("wrote merged model to %s (%d steps)", out_dir, trainer.state.global_step)
    trainer.accelerator.wait_for_everyone()
    return summary
