"""Our losses against TRL 1.16's own trainers, on one real batch: `dpo_loss`, `simpo_loss`, and the
anchoring baselines `rpo_loss`, `cpo_loss`, `orpo_loss` and `ipo_loss`.

Each test builds the TRL trainer around the tiny Llama (`tiny_model_dir`), takes one batch from
the trainer's own dataloader (its collator, its tokenization), lets the trainer compute its loss
in eval mode, and compares with our loss fed by per-token log-probs computed here, from the same
model on the same batch, with a plain selective log-softmax. For the anchoring baselines the
trainer's loss is computed with gradients enabled and the gradients with respect to every
parameter of the (LoRA-free) tiny model are compared too.

Batch layouts (read from the installed TRL source):
- DPOTrainer (trl/trainer/dpo_trainer.py, `_compute_loss`): `input_ids` and `completion_mask`
  of shape [2B, T], the B chosen rows first, then the B rejected rows; position t+1's token is
  scored by the logits at t, and counts when `completion_mask[:, t+1] == 1`.
- CPOTrainer (trl/experimental/cpo/cpo_trainer.py, `concatenated_forward`) and ORPOTrainer
  (trl/experimental/orpo/orpo_trainer.py, the same code): separate `chosen_*`/`rejected_*`
  tensors, concatenated (chosen first) and padded to one length by `concatenated_inputs`; a token
  counts when its label is not -100 (prompt and padding are -100).
"""

from __future__ import annotations

import math

import pytest
import torch

from prefopt.losses import cpo_loss, dpo_loss, ipo_loss, orpo_loss, rpo_loss, simpo_loss

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


def token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
    """Selective log-softmax: log pi(x_{t+1} | x_<=t) for every t, shape [rows, T-1]."""
    with torch.set_grad_enabled(grad):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
        log_probs = torch.log_softmax(logits[:, :-1, :], dim=-1)
        return log_probs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def _parameter_grads(loss: torch.Tensor, model) -> list[torch.Tensor]:
    # retain_graph: ORPO's comparison loss shares our forward's graph.
    return list(torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], retain_graph=True))


def _max_abs_diff(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    assert len(ours) == len(theirs)
    return max((a - b).abs().max().item() for a, b in zip(ours, theirs, strict=True))


def _assert_same_loss(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    difference = abs(ours.item() - theirs.item())
    assert difference <= TOL, f"|loss difference| {difference:.3g} (TRL's loss {theirs.item():.6g})"
    print(f"|loss difference| {difference:.3g}, TRL's loss {theirs.item():.6g}")
    return difference


def _assert_same_gradients(ours: torch.Tensor, theirs: torch.Tensor, model) -> float:
    """Loss gradients w.r.t. every model parameter agree within TOL; returns the max abs difference."""
    our_grads, their_grads = _parameter_grads(ours, model), _parameter_grads(theirs, model)
    largest = max(g.abs().max().item() for g in their_grads)
    assert largest > 1e-3, "vanishing gradients: a vacuous comparison"
    difference = _max_abs_diff(our_grads, their_grads)
    assert difference <= TOL, f"max |grad difference| {difference:.3g} (largest gradient {largest:.3g})"
    print(f"max |grad difference| {difference:.3g}, largest |grad| {largest:.3g}")
    return difference


def _first_batch(trainer) -> dict:
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer._prepare_inputs(batch)


def test_dpo_loss_equals_trl_dpo_trainer_sigmoid(tiny_model_dir, tmp_path):
    beta = 0.1
    # TRL's layout: [chosen rows; rejected rows], completion_mask over input positions (_dpo_trainer_with_grad).
    _, trl_loss, trl_metrics, inputs = _dpo_trainer_with_grad(tiny_model_dir, tmp_path, beta=beta,
                                                                loss_type=["sigmoid"])
    loss, metrics = dpo_loss(**inputs, beta=beta)
    assert not math.isclose(trl_loss.item(), math.log(2), abs_tol=1e-3), "policy == reference: a vacuous test"
    assert loss.item() == pytest.approx(trl_loss.item(), abs=TOL)
    for name in SHARED_METRICS:
        assert metrics[name].item() == pytest.approx(trl_metrics[name], abs=TOL, rel=TOL), name
    # TRL logs logps/* as summed (not length-normalised) sequence log-probs for DPO; so do we.
    expected_sum = torch.where(inputs["chosen_mask"], inputs["chosen_logps"], 0.0).sum(-1).mean()
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


# ---------------------------------------------------------------------------------------------
# Anchoring baselines: loss, gradients w.r.t. the model parameters, and metrics


def _dpo_trainer_with_grad(tiny_model_dir, tmp_path, **config):
    """A DPOTrainer (policy = perturbed tiny model, reference = tiny model) with `config`, one batch,
    TRL's loss computed with gradients, its logged metrics, and our inputs: the policy's per-token
    log-probs with gradients (a second forward of the same model), the reference's without."""
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    args = DPOConfig(**_common_args(tmp_path), precompute_ref_log_probs=False, **config)
    trainer = DPOTrainer(
        model=_load(tiny_model_dir, noise_seed=1), ref_model=_load(tiny_model_dir), args=args,
        train_dataset=_dataset(), processing_class=tokenizer,
    )
    batch = _first_batch(trainer)
    trainer.model.eval()
    trl_loss = trainer.compute_loss(trainer.model, batch, return_outputs=False)
    assert trl_loss.requires_grad
    trl_metrics = {name: values[-1] for name, values in trainer._metrics["eval"].items()}

    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    mask = batch["completion_mask"][:, 1:].bool()
    assert input_ids.shape[0] == 2 * len(PAIRS)
    policy_logps = token_logps(trainer.model, input_ids, attention_mask, grad=True)
    reference_logps = token_logps(trainer.ref_model, input_ids, attention_mask)
    chosen_logps, rejected_logps = policy_logps.chunk(2)
    ref_chosen_logps, ref_rejected_logps = reference_logps.chunk(2)
    chosen_mask, rejected_mask = mask.chunk(2)
    # Padded positions hold garbage; the loss must see neither it nor its gradient.
    chosen_logps = chosen_logps.masked_fill(~chosen_mask, float("nan"))
    ref_rejected_logps = ref_rejected_logps.masked_fill(~rejected_mask, 1e9)
    inputs = dict(
        chosen_logps=chosen_logps, chosen_mask=chosen_mask, rejected_logps=rejected_logps,
        rejected_mask=rejected_mask, ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps,
    )
    return trainer, trl_loss, trl_metrics, inputs


def _paired_trainer_with_grad(trainer_cls, config_cls, tiny_model_dir, tmp_path, **config):
    """A CPOTrainer or ORPOTrainer with `config`, one batch, TRL's loss (with gradients) and metrics,
    and our inputs: per-token log-probs with gradients, from a second forward of the same model."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    args = config_cls(**_common_args(tmp_path), **config)
    trainer = trainer_cls(
        model=_load(tiny_model_dir, noise_seed=2), args=args, train_dataset=_dataset(), processing_class=tokenizer
    )
    batch = _first_batch(trainer)
    trainer.model.eval()
    trl_loss, trl_metrics = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    assert trl_loss.requires_grad

    # The padding each trainer's own concatenated_forward uses.
    padding = trainer.padding_value if hasattr(trainer, "padding_value") else trainer.pad_token_id
    concatenated = trainer.concatenated_inputs(batch, padding_value=padding)
    input_ids = concatenated["concatenated_input_ids"]
    attention_mask = concatenated["concatenated_attention_mask"]
    labels = concatenated["concatenated_labels"]
    assert input_ids.shape[0] == 2 * len(PAIRS)
    logps = token_logps(trainer.model, input_ids, attention_mask, grad=True)
    mask = labels[:, 1:] != -100
    chosen_logps, rejected_logps = logps.chunk(2)
    chosen_mask, rejected_mask = mask.chunk(2)
    rejected_logps = rejected_logps.masked_fill(~rejected_mask, float("nan"))
    inputs = dict(chosen_logps=chosen_logps, chosen_mask=chosen_mask, rejected_logps=rejected_logps,
                  rejected_mask=rejected_mask)
    # Every non-padding position of the chosen rows (prompt included), for ORPO's NLL.
    full_chosen_mask = attention_mask[:, 1:].bool().chunk(2)[0]
    return trainer, trl_loss, trl_metrics, inputs, (logps.chunk(2)[0], full_chosen_mask)


def _pooled_nll(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """TRL's `nn.CrossEntropyLoss()` over the unmasked labels: -(mean of the selected log-probs)."""
    return -token_logps[mask].mean()


def test_rpo_loss_equals_trl_dpo_trainer_sigmoid_plus_sft(tiny_model_dir, tmp_path):
    # TRL 1.16: RPO is DPOConfig(loss_type=["sigmoid", "sft"], loss_weights=[1.0, rpo_alpha]).
    beta, rpo_alpha = 0.2, 0.5
    trainer, trl_loss, trl_metrics, inputs = _dpo_trainer_with_grad(
        tiny_model_dir, tmp_path, beta=beta, loss_type=["sigmoid", "sft"], loss_weights=[1.0, rpo_alpha]
    )
    loss, metrics = rpo_loss(**inputs, beta=beta, rpo_alpha=rpo_alpha)
    _assert_same_loss(loss, trl_loss)
    for name in SHARED_METRICS:
        assert metrics[name].item() == pytest.approx(trl_metrics[name], abs=TOL, rel=TOL), name
    assert metrics["rpo/dpo_term"] + metrics["rpo/nll_term"] == pytest.approx(loss.item(), abs=TOL)
    assert metrics["rpo/nll_term"].item() == pytest.approx(rpo_alpha * metrics["rpo/nll_loss"].item(), abs=TOL)
    assert metrics["rpo/nll_term"].item() > 1.0, "the NLL term must matter in this test"
    _assert_same_gradients(loss, trl_loss, trainer.model)


def test_ipo_loss_equals_trl_dpo_trainer_ipo(tiny_model_dir, tmp_path):
    # TRL 1.16: DPOConfig(loss_type=["ipo"], beta=tau); TRL averages the log-ratios over completion tokens.
    beta = 0.5
    trainer, trl_loss, trl_metrics, inputs = _dpo_trainer_with_grad(
        tiny_model_dir, tmp_path, beta=beta, loss_type=["ipo"]
    )
    loss, metrics = ipo_loss(**inputs, beta=beta)
    _assert_same_loss(loss, trl_loss)
    for name in SHARED_METRICS:
        assert metrics[name].item() == pytest.approx(trl_metrics[name], abs=TOL, rel=TOL), name
    assert metrics["ipo/delta"].abs().item() > 1e-3, "policy == reference: a vacuous test"
    _assert_same_gradients(loss, trl_loss, trainer.model)


def test_cpo_loss_equals_trl_cpo_trainer_sigmoid(tiny_model_dir, tmp_path):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    # TRL 1.16: CPOConfig(loss_type="sigmoid", beta=beta, cpo_alpha=cpo_alpha), label_smoothing=0, alpha=0.
    beta, cpo_alpha = 0.2, 0.5
    trainer, trl_loss, trl_metrics, inputs, _ = _paired_trainer_with_grad(
        CPOTrainer, CPOConfig, tiny_model_dir, tmp_path, loss_type="sigmoid", beta=beta, cpo_alpha=cpo_alpha
    )
    loss, metrics = cpo_loss(**inputs, beta=beta, cpo_alpha=cpo_alpha)
    _assert_same_loss(loss, trl_loss)
    for name in SHARED_METRICS:
        assert metrics[name].item() == pytest.approx(trl_metrics[name], abs=TOL, rel=TOL), name
    assert metrics["cpo/nll_loss"].item() == pytest.approx(trl_metrics["nll_loss"], abs=TOL)
    assert metrics["cpo/nll_term"].item() > 1.0, "the NLL term must matter in this test"
    _assert_same_gradients(loss, trl_loss, trainer.model)


def test_orpo_loss_equals_trl_orpo_trainer_with_a_completion_only_nll(tiny_model_dir, tmp_path):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    # TRL 1.16: ORPOConfig(beta=lambda). TRL's NLL counts the chosen prompt tokens too; ours only the
    # completion tokens, so TRL's loss is compared after swapping its NLL for the completion-only one.
    beta = 0.25
    trainer, trl_loss, trl_metrics, inputs, (chosen_all_logps, full_chosen_mask) = _paired_trainer_with_grad(
        ORPOTrainer, ORPOConfig, tiny_model_dir, tmp_path, beta=beta
    )
    trl_nll = _pooled_nll(chosen_all_logps, full_chosen_mask)
    assert trl_nll.item() == pytest.approx(trl_metrics["nll_loss"], abs=TOL), "TRL's NLL is not the one read here"
    completion_nll = _pooled_nll(chosen_all_logps, inputs["chosen_mask"])
    trl_completion_only = trl_loss - trl_nll + completion_nll

    loss, metrics = orpo_loss(**inputs, beta=beta)
    _assert_same_loss(loss, trl_completion_only)
    assert abs(loss.item() - trl_loss.item()) > 1e-3, "prompt tokens should change TRL's NLL here"
    assert metrics["orpo/nll_term"].item() == pytest.approx(completion_nll.item(), abs=TOL)
    assert metrics["orpo/odds_ratio_term"].item() == pytest.approx((trl_loss - trl_nll).item(), abs=TOL)
    for name in SHARED_METRICS:
        assert metrics[name].item() == pytest.approx(trl_metrics[name], abs=TOL, rel=TOL), name
    assert metrics["orpo/log_odds_ratio"].item() == pytest.approx(trl_metrics["log_odds_ratio"], abs=TOL)
    assert metrics["orpo/log_odds"].item() == pytest.approx(trl_metrics["log_odds_chosen"], abs=TOL)
    _assert_same_gradients(loss, trl_completion_only, trainer.model)
