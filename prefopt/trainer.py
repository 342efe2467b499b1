"""One preference trainer for every registered objective (prefopt.objectives; the built-ins in prefopt.losses).

A training step is one forward over the chosen and rejected completions of a batch, each pair one
shared-prompt sequence packed with others into rows where the model allows it (`prefopt.logprobs`,
docs/batching.md), the loss from the registry, and Trainer's backward/optimizer machinery, so the
same code runs under `python`, `accelerate launch --multi_gpu` (DDP) and DeepSpeed ZeRO-2. The
reference model runs only for losses that need it (`Objective.needs_reference`, e.g. DPO): with LoRA
it is the same network with the adapters disabled, otherwise a frozen copy.

    from prefopt.trainer import PreferenceConfig, PreferenceTrainer
    args = PreferenceConfig(output_dir="ckpt", loss_type="slime", loss_kwargs={"p": 2.0}, use_cpu=True)
    trainer = PreferenceTrainer(model, args, train_dataset=rows, processing_class=tokenizer)
    trainer.train()

`build_preference_trainer`, `save_preference_weights` and `preference_summary` are the alignment
stage of the job around it (prefopt.job: identity, resume, publish, summary), which imports them;
this module does not import the job. The metrics file and checkpoint scanning are prefopt.checkpoints'.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainingArguments

from prefopt.checkpoints import MetricsFileCallback, prepare_metrics_file, select_checkpoint
from prefopt.guards import FiniteStepsMixin, NonFiniteStepError
from prefopt.logprobs import (
    adapters_disabled,
    pair_collator,
    pair_token_logps,
    tokenize_pair,
    use_fp32_attention_on_cpu,
)
from prefopt.losses import compute_loss
from prefopt.objectives import get_objective
from prefopt.models import upcast_trainable_parameters
from prefopt.run_config import RunConfig

logger = logging.getLogger(__name__)

class NonFiniteLossError(NonFiniteStepError):
    """The loss (or one of its terms) became NaN or Inf; the message names the step and the terms."""


@dataclass
class PreferenceConfig(TrainingArguments):
    r"""
    Configuration of [`PreferenceTrainer`]: `transformers.TrainingArguments` plus the objective.

    Parameters:
        loss_type (`str`, *optional*, defaults to `"slime"`):
            Objective registered in `prefopt.objectives` (the built-ins are in `prefopt.losses`; docs/objectives.md
            lists them), e.g. `"slime"` (paper, eqs. 5-10) or `"dpo"` (needs a reference model).
        loss_kwargs (`dict`, *optional*, defaults to `{}`):
            Hyperparameters passed to the loss; unset ones take the defaults of the loss's signature,
            e.g. `{"lambda_w": 0.1, "p": 2.5}` for SLIME or `{"beta": 0.1}` for DPO.
        max_length (`int`, *optional*, defaults to `512`):
            Maximum prompt + completion tokens; completions are truncated from the right.
        max_prompt_length (`int`, *optional*, defaults to `256`):
            Maximum prompt tokens (smaller than `max_length`); prompts are truncated from the left.
        metrics_file (`str` or `None`, *optional*, defaults to `None`):
            JSON-lines file receiving one record per logging step (`step`, `epoch`, `loss`, `lr` and every
            metric). On resume, records past the resumed step are dropped, so each step appears once.
    """

    loss_type: str = field(
        default="slime", metadata={"help": "Objective: a name registered in prefopt.objectives (built-ins in prefopt.losses)."}
    )
    loss_kwargs: dict = field(default_factory=dict, metadata={"help": "Loss hyperparameters (defaults: the loss's)."})
    max_length: int | None = field(default=512, metadata={"help": "Maximum prompt + completion tokens."})
    max_prompt_length: int | None = field(default=256, metadata={"help": "Maximum prompt tokens (left-truncated)."})
    metrics_file: str | None = field(default=None, metadata={"help": "JSON-lines metrics file (append-safe)."})
    # Trainer's defaults that do not fit pair batches: keep prompt_ids/chosen_ids/rejected_ids columns.
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False for pair batches."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N optimizer steps."})

    def __post_init__(self):
        # Raises naming an unknown objective or hyperparameter (with a near miss) or a value out of its range.
        get_objective(self.loss_type).check_kwargs(self.loss_kwargs or {}, "PreferenceConfig.loss_kwargs")
        super().__post_init__()


def _is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


class PreferenceTrainer(FiniteStepsMixin, Trainer):
    """`transformers.Trainer` for pairwise preference objectives (one class for every loss in the registry).

    `train_dataset` holds tokenized pairs (`prompt_ids`, `chosen_ids`, `rejected_ids`) or raw
    conversational rows (docs/architecture.md), which are tokenized with `processing_class`.
    Logs TRL's metric names (`rewards/*`, `logps/*`) plus every metric the loss returns, averaged over
    the logging interval and over processes, and writes them to `args.metrics_file`.
    """

    # compute_loss returns a per-micro-batch mean; Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, model, args: PreferenceConfig, train_dataset=None, eval_dataset=None, processing_class=None,
                 ref_model=None, data_collator=None, callbacks=None, **kwargs):
        if not isinstance(args, PreferenceConfig):
            raise TypeError(f"PreferenceTrainer needs a PreferenceConfig, got {type(args).__name__}")
        self.loss_spec = get_objective(args.loss_type)
        self.loss_kwargs = dict(args.loss_kwargs or {})
        if data_collator is None:
            if processing_class is None:
                raise ValueError("PreferenceTrainer: pass processing_class (the tokenizer) or a data_collator")
            # One shared-prompt sequence per pair, packed rows; two padded rows per pair where the model can't.
            data_collator = pair_collator(model, processing_class.pad_token_id)
        if (args.bf16 or args.fp16) and not args.deepspeed:
            # Mixed precision keeps fp32 master weights: the trained parameters (LoRA, saved modules, or all of
            # them in a full fine-tune) are fp32 whatever dtype the base was loaded in; autocast does the rest.
            upcast_trainable_parameters(model)
            if args.use_cpu or not torch.cuda.is_available():
                use_fp32_attention_on_cpu()
        train_dataset = self._tokenized(train_dataset, processing_class, args, "train")
        eval_dataset = self._tokenized(eval_dataset, processing_class, args, "eval")
        if hasattr(model, "config"):
            model.config.use_cache = False
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, data_collator=data_collator, callbacks=callbacks, **kwargs)

        self.uses_adapter_reference = False
        self.ref_model = None
        if self.loss_spec.needs_reference:
            if _is_peft_model(model) and ref_model is None:
                self.uses_adapter_reference = True
            else:
                if ref_model is None:
                    ref_model = copy.deepcopy(model)
                ref_model.eval()
                ref_model.requires_grad_(False)
                if self.is_deepspeed_enabled:
                    # ZeRO-2 keeps full parameters on every rank: a plain frozen copy on this rank's device.
                    self.ref_model = ref_model.to(self.accelerator.device)
                else:
                    self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        elif ref_model is not None:
            logger.warning("loss '%s' is reference-free: the ref_model passed is ignored", args.loss_type)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.reference_forward_calls = 0
        if args.metrics_file:
            self.add_callback(MetricsFileCallback(args.metrics_file))

    # ----------------------------------------------------------------------------------------- data

    @staticmethod
    def _tokenized(dataset, tokenizer, args: PreferenceConfig, name: str):
        if dataset is None or len(dataset) == 0:
            return dataset
        first = dataset[0]
        if "prompt_ids" in first:
            return dataset
        if tokenizer is None:
            raise ValueError(f"PreferenceTrainer: {name} rows are not tokenized and no processing_class was given")
        return [
            tokenize_pair(tokenizer, row, max_length=args.max_length, max_prompt_length=args.max_prompt_length)
            for row in tqdm(dataset, desc=f"tokenize {name} pairs", disable=len(dataset) < 1000)
        ]

    # ----------------------------------------------------------------------------------------- loss

    def reference_token_logps(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) per-token log-probs of the reference policy (no gradients)."""
        self.reference_forward_calls += 1
        if self.uses_adapter_reference:
            with adapters_disabled(model), self.accelerator.autocast():
                chosen, _, rejected, _ = pair_token_logps(model, inputs)
        else:
            with torch.no_grad(), self.accelerator.autocast():
                chosen, _, rejected, _ = pair_token_logps(self.ref_model, inputs)
        return chosen.detach(), rejected.detach()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        references = {}
        if self.loss_spec.needs_reference:
            # Before the policy forward: under DDP the graph-building forward should be the last one.
            ref_chosen, ref_rejected = self.reference_token_logps(model, inputs)
            references = {"ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
        # Under mixed precision the decoder and the LM head's matmuls run in bf16 (accelerate's autocast); the
        # log-softmax (prefopt.logprobs) and the loss below run in fp32.
        with self.accelerator.autocast():
            chosen_logps, chosen_mask, rejected_logps, rejected_mask = pair_token_logps(model, inputs)
        loss, metrics = compute_loss(self.args.loss_type, chosen_logps.float(), chosen_mask, rejected_logps.float(),
                                     rejected_mask, **references, **self.loss_kwargs)
        self._record_metrics(mode, loss, metrics)
        if return_outputs:
            return loss, {"chosen_logps": chosen_logps.detach(), "rejected_logps": rejected_logps.detach()}
        return loss

    def _record_metrics(self, mode: str, loss: torch.Tensor, metrics: dict[str, torch.Tensor]) -> None:
        """Gather loss + metrics from every process in one call; raise if any is non-finite anywhere."""
        names = list(metrics)
        local = torch.stack([loss.detach().float().reshape(())] + [metrics[n].detach().float().reshape(()) for n in names])
        gathered = self.accelerator.gather_for_metrics(local.unsqueeze(0)).reshape(-1, len(names) + 1)
        if not torch.isfinite(gathered).all():
            bad_terms = [name for column, name in enumerate(["loss"] + names) if not torch.isfinite(gathered[:, column]).all()]
            step = self.state.global_step + (1 if mode == "train" else 0)
            raise NonFiniteLossError(
                f"non-finite {self.args.loss_type} loss at global step {step} ({mode}): "
                f"non-finite terms: {', '.join(bad_terms)}; "
                f"values (process 0): {dict(zip(['loss'] + names, gathered[0].tolist()))}"
            )
        means = gathered.mean(dim=0).tolist()
        for name, value in zip(names, means[1:]):
            self._metrics[mode][name].append(value)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ----------------------------------------------------------------------------------------- logging

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the loss metrics averaged over the logging interval (as TRL does), then log everywhere."""
        mode = "train" if self.model.training else "eval"
        averaged = {name: sum(values) / len(values) for name, values in self._metrics[mode].items() if values}
        if mode == "eval":
            averaged = {f"eval_{name}": value for name, value in averaged.items()}
        logs.update(averaged)
        super().log(logs, start_time)  # -> callbacks: TensorBoard, MetricsFileCallback
        self._metrics[mode].clear()

    def train(self, resume_from_checkpoint=None, **kwargs):
        """Trainer.train; `resume_from_checkpoint=True` resumes the newest complete checkpoint of
        `output_dir`, and `args.metrics_file` keeps the records up to the step resumed from."""
        if resume_from_checkpoint is True:
            resume, skipped = select_checkpoint(self.args.output_dir)
            if resume is None:
                raise ValueError(f"resume_from_checkpoint=True but {self.args.output_dir} has no complete checkpoint")
            if skipped:
                logger.warning("resuming %s, not %s (incomplete)", resume.name, ", ".join(p.name for p in skipped))
            resume_from_checkpoint = str(resume)
        if self.args.metrics_file and self.is_world_process_zero():
            prepare_metrics_file(self.args.metrics_file, resume_from_checkpoint)
        self.accelerator.wait_for_everyone()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# The alignment job's stage (the job itself is prefopt.job.run_job)


def build_preference_trainer(run_config: RunConfig, model_dir, tokenizer, train_rows: list[dict],
                             eval_rows: list[dict] | None, checkpoint_dir) -> PreferenceTrainer:
    """The model (LoRA applied when configured) and its PreferenceTrainer, from a checked run config
    whose precision is resolved (the job adds its metrics file, identity and probe callbacks)."""
    from prefopt.models import apply_lora, load_model
    from prefopt.training_args import to_training_arguments

    if run_config.is_sft:
        raise ValueError("build_preference_trainer: run config 'method' is 'sft'; use prefopt.sft")
    model = apply_lora(load_model(str(model_dir), run_config.training.precision), run_config.lora)
    args = to_training_arguments(run_config, checkpoint_dir, PreferenceConfig)
    if args.activation_checkpointing and run_config.lora is not None:
        model.enable_input_require_grads()
    return PreferenceTrainer(model, args, train_dataset=train_rows, eval_dataset=eval_rows or None,
                             processing_class=tokenizer)


def save_preference_weights(trainer: PreferenceTrainer, staging: Path, run_config: RunConfig, tokenizer,
                            model_dir) -> str:
    """`adapter/` (PEFT) or `model/` (full fine-tune) in `staging`; every rank calls it (DeepSpeed gathers)."""
    weights_dir = staging / ("adapter" if run_config.lora is not None else "model")
    trainer.save_model(str(weights_dir))
    if run_config.lora is None and trainer.is_world_process_zero():
        tokenizer.save_pretrained(weights_dir)
    return weights_dir.name


def preference_summary(trainer: PreferenceTrainer) -> dict:
    return {"loss_kwargs": {**trainer.loss_spec.defaults, **trainer.loss_kwargs},
            "reference_forward_calls": trainer.reference_forward_calls}
