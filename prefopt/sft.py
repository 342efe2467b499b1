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
`build_sft_trainer`, `save_sft_model` and `sft_summary` are the SFT stage of the job around them
(prefopt.job.sft_stage), which imports this module; this module does not import the job.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from tqdm.auto import tqdm

from prefopt.logprobs import completion_ids_from_template
from prefopt.run_config import RunConfig

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


def build_sft_trainer(run_config: RunConfig, model_dir, tokenizer, train_rows: list[dict],
                      eval_rows: list[dict] | None, checkpoint_dir):
    """The model (LoRA applied when configured) and TRL's SFTTrainer with the non-finite guard, from a
    checked run config whose precision is resolved (the job adds its metrics file and identity callbacks)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from prefopt.guards import FiniteStepsMixin, NonFiniteStepError
    from prefopt.models import apply_lora, load_model
    from prefopt.training_args import training_arguments_kwargs

    if not run_config.is_sft:
        raise ValueError(f"build_sft_trainer: run config 'method' is {run_config.method!r}, expected 'sft'")
    training = run_config.training
    precision = training.precision

    class GuardedSFTTrainer(FiniteStepsMixin, SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            loss = result[0] if return_outputs else result
            # Every process learns of a non-finite loss anywhere, so none waits on the others.
            if not torch.isfinite(self.accelerator.gather(loss.detach().float().reshape(1))).all():
                mode = "train" if model.training else "eval"
                step = self.state.global_step + (1 if mode == "train" else 0)
                raise NonFiniteStepError(
                    f"non-finite sft loss at global step {step} ({mode}): non-finite terms: loss (cross-entropy); "
                    "the update was not applied and no checkpoint was saved")
            return result

    def tokenized(rows, name):
        return Dataset.from_list([
            tokenize_sft_row(tokenizer, row, max_length=training.max_length,
                             max_prompt_length=training.max_prompt_length)
            for row in tqdm(rows, desc=f"tokenize {name} conversations", disable=len(rows) < 1000)
        ])

    model = apply_lora(load_model(str(model_dir), precision), run_config.lora)
    if precision == "bf16":
        from prefopt.logprobs import use_fp32_attention_on_cpu
        from prefopt.models import upcast_trainable_parameters

        upcast_trainable_parameters(model)  # fp32 master weights under bf16 autocast, as the alignment trainer
        if training.device == "cpu":
            use_fp32_attention_on_cpu()
    args = SFTConfig(**training_arguments_kwargs(run_config, checkpoint_dir), max_length=training.max_length,
                     completion_only_loss=True, packing=False, dataset_kwargs={})
    if args.activation_checkpointing and run_config.lora is not None:
        model.enable_input_require_grads()
    return GuardedSFTTrainer(model=model, args=args, train_dataset=tokenized(train_rows, "train"),
                             eval_dataset=tokenized(eval_rows, "eval") if eval_rows else None,
                             processing_class=tokenizer)


def save_sft_model(trainer, staging: Path, run_config: RunConfig, tokenizer, model_dir) -> str:
    """The merged model (LoRA folded into the base weights) and tokenizer at the top of `staging`."""
    if not trainer.is_world_process_zero():
        return "."
    final_model = trainer.accelerator.unwrap_model(trainer.model)
    if run_config.lora is not None:
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
    return "."


def sft_summary(trainer) -> dict:
    return {"merged_lora": _is_lora(trainer.accelerator.unwrap_model(trainer.model)),
            "loss_on": "assistant completion only (prompt tokens masked)"}


def _is_lora(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)
