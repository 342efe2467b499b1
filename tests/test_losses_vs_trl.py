"""`dpo_loss` and `simpo_loss` against TRL 1.16's own trainers, on one real batch.

Each test builds the TRL trainer around the tiny Llama (`tiny_model_dir`), takes one batch from
the trainer's own dataloader (its collator, its tokenization), lets the trainer compute its loss
in eval mode, and compares with our loss fed by per-token log-probs computed here, from the same
model on the same batch, with a plain selective log-softmax.

Batch layouts (read from the installed TRL source):
- DPOTrainer (trl/trainer/dpo_trainer.py, `_compute_loss`): `input_ids` and `completion_mask`
  of shape [2B, T], the B chosen rows first, then the B rejected rows; position t+1's token is
  scored by the logits at t, and counts when `completion_mask[:, t+1] == 1`.
- CPOTrainer (trl/experimental/cpo/cpo_trainer.py, `concatenated_forward`): separate
  `chosen_*`/`rejected_*` tensors, concatenated (chosen first) and padded to one length by
  `concatenated_inputs`; a token counts when its label is not -100 (prompt and padding are -100).
"""

from __future__ import annotations

import math

import pytest
import torch

from prefopt.losses import dpo_loss, simpo_loss

# TRL's configs default gradient_checkpointing=True; turning it off names a field transformers 5 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")

# Four conversational pairs; chosen and rejected lengths differ so sums, means and padding matter.
PAIRS = [
    ("What is 17 + 25?", "17 + 25 = 42.\n\nAnswer: 42", "It is 43."),
    ("Name a primary colour.", "Red.", "Green is a primary colour of paint, as everyone knows."),
    ("Spell 'cat' backwards.", "t-a-c, so the answer is 'tac'.", "tca"),
    ("Is 7 prime?", "Yes: 7 has no divisors other than 1 and 7.", "No, 7 = 2 x 3.5, so it is not prime."),
]
TOL = 1e-5
SHARED_METRICS = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
]


def _dataset():
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
            for prompt, chosen, rejected in PAIRS
        ]
    )


def _load(model_dir: str, *, noise_seed: int | None = None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if noise_seed is not None:
        # A perturbed copy, so policy and reference differ and the DPO log-ratios are not all zero.
        generator = torch.Generator().manual_seed(noise_seed)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def _common_args(tmp_path) -> dict:
    return dict(
        output_dir=str(tmp_path / "out"),
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        report_to=[],
        per_device_train_batch_size=len(PAIRS),
        per_device_eval_batch_size=len(PAIRS),
        max_length=256,
        seed=0,
    )


@torch.no_grad()
def token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Selective log-softmax: log pi(x_{t+1} | x_<=t) for every t, shape [rows, T-1]."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
    log_probs = torch.log_softmax(logits[:, :-1, :], dim=-1)
    return log_probs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def _first_batch(trainer) -> dict:
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer._prepare_inputs(batch)


def test_dpo_loss_equals_trl_dpo_trainer_sigmoid(tokenizer_dir, tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    beta = 0.1
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = _load(tiny_model_dir, noise_seed=1)
    reference = _load(tiny_model_dir)
    args = DPOConfig(**_common_args(tmp_path), beta=beta, loss_type=["sigmoid"], precompute_ref_log_probs=False)
    trainer = DPOTrainer(
        model=policy, ref_model=reference, args=args, train_dataset=_dataset(), processing_class=tokenizer
    )
    batch = _first_batch(trainer)
    trainer.model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch, return_outputs=False)
    trl_metrics = {name: values[-1] for name, values in trainer._metrics["eval"].items()}

    # The layout: [chosen rows; rejected rows], completion_mask over input positions.
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    mask = batch["completion_mask"][:, 1:].bool()
    assert input_ids.shape[0] == 2 * len(PAIRS)
    policy_logps = token_logps(trainer.model, input_ids, attention_mask)
    reference_logps = token_logps(trainer.ref_model, input_ids, attention_mask)
    chosen_logps, rejected_logps = policy_logps.chunk(2)
    ref_chosen_logps, ref_rejected_logps = reference_logps.chunk(2)
    chosen_mask, rejected_mask = mask.chunk(2)
    # Padded positions hold garbage; the loss must not see it.
    chosen_logps = chosen_logps.masked_fill(~chosen_mask, float("nan"))
    ref_rejected_logps = ref_rejected_logps.masked_fill(~rejected_mask, 1e9)

    loss, metrics = dpo_loss(
        chosen_logps, chosen_mask, rejected_logps, rejected_mask, ref_chosen_logps, ref_rejected_logps, beta=beta
    )
    assert not math.isclose(trl_loss.item(), math.log(2), abs_tol=1e-3), "policy == reference: a vacuous test"
    assert loss.item() == pytest.approx(trl_loss.item(), abs=TOL)
    for name in SHARED_METRICS:
        assert metrics[name].item() == pytest.approx(trl_metrics[name], abs=TOL, rel=TOL), name
    # TRL logs logps/* as summed (not length-normalised) sequence log-probs for DPO; so do we.
    expected_sum = torch.where(chosen_mask, policy_logps.chunk(2)[0], 0.0).sum(-1).mean()
    assert metrics["logps/chosen"].item() == pytest.approx(expected_sum.item(), abs=TOL)


@pytest.mark.parametrize(("beta", "gamma"), [(2.0, 0.2), (2.5, 1.375)])
def test_simpo_loss_equals_trl_cpo_trainer_simpo(tokenizer_dir, tiny_model_dir, tmp_path, beta, gamma):
    from transformers import AutoTokenizer
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = _load(tiny_model_dir, noise_seed=2)
    # Our `gamma` is the SimPO paper's target reward margin, which is TRL's `simpo_gamma` as is.
    args = CPOConfig(**_common_args(tmp_path), loss_type="simpo", cpo_alpha=0.0, beta=beta, simpo_gamma=gamma)
    trainer = CPOTrainer(model=model, args=args, train_dataset=_dataset(), processing_class=tokenizer)
    batch = _first_batch(trainer)
    trainer.model.eval()
    with torch.no_grad():
        trl_loss, trl_metrics = trainer.compute_loss(trainer.model, batch, return_outputs=True)

    concatenated = trainer.concatenated_inputs(batch, padding_value=trainer.pad_token_id)
    input_ids = concatenated["concatenated_input_ids"]
    attention_mask = concatenated["concatenated_attention_mask"]
    labels = concatenated["concatenated_labels"]
    assert input_ids.shape[0] == 2 * len(PAIRS)
    logps = token_logps(trainer.model, input_ids, attention_mask)
    mask = labels[:, 1:] != -100
    chosen_logps, rejected_logps = logps.chunk(2)
    chosen_mask, rejected_mask = mask.chunk(2)
    rejected_logps = rejected_logps.masked_fill(~rejected_mask, float("nan"))

    loss, metrics = simpo_loss(chosen_logps, chosen_mask, rejected_logps, rejected_mask, beta=beta, gamma=gamma)
    assert loss.item() == pytest.approx(trl_loss.item(), abs=TOL)
    for name in SHARED_METRICS:
        assert metrics[name].item() == pytest.approx(trl_metrics[name], abs=TOL, rel=TOL), name

    # The other reading of gamma (SimPO's own code: gamma_beta_ratio, margin beta * gamma) would not match.
    wrong, _ = simpo_loss(chosen_logps, chosen_mask, rejected_logps, rejected_mask, beta=beta, gamma=beta * gamma)
    assert abs(wrong.item() - trl_loss.item()) > 1e-3
