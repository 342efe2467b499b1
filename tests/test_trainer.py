"""PreferenceTrainer on the tiny 2-layer Llama (the job around it: tests/test_job.py)."""

from __future__ import annotations

import json

import pytest
import torch

from prefopt.logprobs import PairCollator, completion_token_logps, tokenize_pair
from prefopt.trainer import NonFiniteLossError, PreferenceConfig, PreferenceTrainer

PAIRS = [
    ("What is 17 + 25?", "17 + 25 = 42.\n\nAnswer: 42", "17 + 25 = 43.\n\nAnswer: 43"),
    ("Sort 9, 2, 5 ascending.", "2, 5, 9\n\nAnswer: 2, 5, 9", "2, 9, 5\n\nAnswer: 2, 9, 5"),
    ("Convert 3 km to metres.", "3 km = 3000 m.\n\nAnswer: 3000", "3 km = 300 m.\n\nAnswer: 300"),
    ("Reverse the word 'stone'.", "Reversed: enots\n\nAnswer: enots", "Reversed: etons\n\nAnswer: etons"),
    ("What is 6 times 7?", "6 x 7 = 42.\n\nAnswer: 42", "6 x 7 = 48.\n\nAnswer: 48"),
    ("Capitalise 'paris'.", "Paris\n\nAnswer: Paris", "paris\n\nAnswer: paris"),
    ("How many grams in 2 kg?", "2 kg = 2000 g.\n\nAnswer: 2000", "2 kg = 20 g.\n\nAnswer: 20"),
    ("Sort b, a, c.", "a, b, c\n\nAnswer: a, b, c", "b, a, c\n\nAnswer: b, a, c"),
]


def make_rows(pairs=PAIRS):
    rows = []
    for index, (prompt, chosen, rejected) in enumerate(pairs):
        user = {"role": "user", "content": prompt}
        rows.append({"prompt_id": f"pair-{index}", "prompt": prompt,
                     "chosen": [user, {"role": "assistant", "content": chosen}],
                     "rejected": [user, {"role": "assistant", "content": rejected}],
                     "score_chosen": 1.0, "score_rejected": 0.0})
    return rows


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from prefopt.models import load_tokenizer

    return load_tokenizer(tokenizer_dir)


def make_trainer(tiny_model_dir, tokenizer, tmp_path, loss_type, *, lora=True, rows=None, loss_kwargs=None,
                 data_collator=None, weights="fp32", **overrides):
    from peft import get_peft_model

    from prefopt.models import LORA_TARGET_MODULES, load_model, lora_config

    torch.manual_seed(0)
    model = load_model(tiny_model_dir, weights)
    if lora:
        model = get_peft_model(model, lora_config(r=8, alpha=16, dropout=0.0, target_modules=LORA_TARGET_MODULES,
                                                    modules_to_save=["lm_head"]))
    settings = dict(output_dir=str(tmp_path / f"ckpt-{loss_type}"), loss_type=loss_type, loss_kwargs=loss_kwargs or {},
                    learning_rate=1e-3, per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=6,
                    lr_scheduler_type="constant", max_grad_norm=0.0, logging_steps=1, save_strategy="no",
                    use_cpu=True, bf16=False, report_to="none", max_length=128, max_prompt_length=96,
                    metrics_file=str(tmp_path / f"{loss_type}-metrics.jsonl"), seed=0, disable_tqdm=True)
    settings.update(overrides)
    args = PreferenceConfig(**settings)
    return PreferenceTrainer(model, args, train_dataset=rows if rows is not None else make_rows()[:4],
                             processing_class=tokenizer, data_collator=data_collator)


def read_records(path):
    return [json.loads(line) for line in open(path)]


@pytest.mark.parametrize("loss_type", ["dpo", "simpo", "slime", "stapo"])
def test_training_lowers_each_loss(tiny_model_dir, tokenizer, tmp_path, loss_type):
    # one batch of 4 pairs, seen at every step: the loss on it must go down
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, loss_type)
    trainer.train()
    losses = [record["loss"] for record in read_records(tmp_path / f"{loss_type}-metrics.jsonl")]
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 1e-3, losses


def count_decoder_forwards(trainer):
    from prefopt.logprobs import unwrap_causal_lm

    calls = []
    unwrap_causal_lm(trainer.model).get_decoder().register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("loss_type,forwards_per_step", [("dpo", 2), ("slime", 1), ("simpo", 1), ("stapo", 1)])
def test_reference_forward_only_for_dpo(tiny_model_dir, tokenizer, tmp_path, loss_type, forwards_per_step):
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, loss_type, max_steps=2)
    calls = count_decoder_forwards(trainer)
    trainer.train()
    assert len(calls) == 2 * forwards_per_step
    assert trainer.reference_forward_calls == (2 if loss_type == "dpo" else 0)


def test_lora_reference_is_the_base_model(tiny_model_dir, tokenizer, tmp_path):
    from prefopt.models import load_model

    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, "dpo", max_steps=3)
    trainer.train()
    assert trainer.uses_adapter_reference and trainer.ref_model is None
    features = [tokenize_pair(tokenizer, row, max_length=128, max_prompt_length=96) for row in make_rows()[:4]]
    batch = PairCollator(tokenizer.pad_token_id)(features)
    trainer.model.eval()
    reference = torch.cat(trainer.reference_token_logps(trainer.model, batch))
    with torch.no_grad():
        policy, _ = completion_token_logps(trainer.model, batch["input_ids"], batch["attention_mask"],
                                           batch["completion_mask"])
        base, _ = completion_token_logps(load_model(tiny_model_dir).eval(), batch["input_ids"],
                                         batch["attention_mask"], batch["completion_mask"])
    torch.testing.assert_close(reference, base, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(policy, base, atol=1e-3)  # the adapter did train


def test_full_finetune_dpo_uses_frozen_reference_copy(tiny_model_dir, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, "dpo", lora=False, max_steps=2, learning_rate=1e-4)
    trainer.train()
    assert trainer.ref_model is not None and not trainer.uses_adapter_reference
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())
    policy_weight = trainer.model.model.layers[0].mlp.up_proj.weight
    reference_weight = trainer.ref_model.model.layers[0].mlp.up_proj.weight
    assert not torch.equal(policy_weight, reference_weight)


def test_metrics_file_has_trl_names_and_slime_terms(tiny_model_dir, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, "slime", max_steps=4, logging_steps=2,
                           per_device_train_batch_size=2, rows=make_rows())
    trainer.train()
    records = read_records(tmp_path / "slime-metrics.jsonl")
    assert [record["step"] for record in records] == [2, 4]
    expected = {"step", "epoch", "loss", "lr", "rewards/chosen", "rewards/rejected", "rewards/margins",
                "rewards/accuracies", "logps/chosen", "logps/rejected", "slime/chosen_term", "slime/rejected_term",
                "slime/distance_term", "slime/delta", "slime/frac_past_hard_margin",
                "slime/frac_rejected_tokens_below_neg_delta"}
    for record in records:
        assert expected <= set(record), expected - set(record)
        total = record["slime/chosen_term"] + record["slime/rejected_term"] + record["slime/distance_term"]
        assert total == pytest.approx(record["loss"], rel=1e-4)  # averaged over the same 2 micro-steps


def test_resume_true_takes_the_newest_complete_checkpoint_and_trims_the_metrics_file(tiny_model_dir, tokenizer,
                                                                                      tmp_path, caplog):
    """Used alone (without prefopt.job), `train(resume_from_checkpoint=True)` resumes the newest checkpoint
    Trainer finished writing (prefopt.checkpoints.select_checkpoint) and keeps the metrics up to its step."""
    import logging

    settings = dict(save_strategy="steps", save_steps=2, per_device_train_batch_size=2, rows=make_rows())
    make_trainer(tiny_model_dir, tokenizer, tmp_path, "slime", max_steps=3, **settings).train()
    assert [record["step"] for record in read_records(tmp_path / "slime-metrics.jsonl")] == [1, 2, 3]
    incomplete = tmp_path / "ckpt-slime" / "checkpoint-3"  # as if killed while saving it: no trainer_state.json
    incomplete.mkdir(exist_ok=True)
    (incomplete / "trainer_state.json").unlink(missing_ok=True)
    resumed = make_trainer(tiny_model_dir, tokenizer, tmp_path, "slime", max_steps=4, **settings)
    with caplog.at_level(logging.WARNING, logger="prefopt.trainer"):
        resumed.train(resume_from_checkpoint=True)
    assert "resuming checkpoint-2, not checkpoint-3 (incomplete)" in caplog.text
    assert [record["step"] for record in read_records(tmp_path / "slime-metrics.jsonl")] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="no complete checkpoint"):
        make_trainer(tiny_model_dir, tokenizer, tmp_path / "empty", "slime").train(resume_from_checkpoint=True)


def test_non_finite_loss_names_step_and_term(tiny_model_dir, tokenizer, tmp_path):
    # p=1000 overflows softplus(...)^p to inf in fp32: the rejected term (and so the loss) is infinite
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, "slime", loss_kwargs={"p": 1000.0}, max_steps=2)
    with pytest.raises(NonFiniteLossError, match=r"global step 1 .*slime/rejected_term") as error:
        trainer.train()
    assert "loss" in str(error.value) and "slime/chosen_term" not in str(error.value).split("values")[0]


def test_non_finite_loss_later_step(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    import prefopt.trainer as trainer_module

    real_compute_loss = trainer_module.compute_loss
    calls = []

    def poisoned(*args, **kwargs):
        loss, metrics = real_compute_loss(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            metrics["slime/distance_term"] = torch.tensor(float("nan"))
            loss = loss * float("nan")
        return loss, metrics

    monkeypatch.setattr(trainer_module, "compute_loss", poisoned)
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, "slime", max_steps=4)
    with pytest.raises(NonFiniteLossError, match=r"global step 3 .*loss, slime/distance_term"):
        trainer.train()


def step_losses(trainer):
    trainer.train()
    return [record["loss"] for record in read_records(trainer.args.metrics_file) if "loss" in record]


@pytest.mark.parametrize("loss_type", ["slime", "dpo"])
def test_default_packed_batches_train_like_two_padded_rows(tiny_model_dir, tokenizer, tmp_path, loss_type):
    """The default collator (shared prompt, packed rows) gives the two-row path's losses, step after step."""
    from prefopt.logprobs import PackedPairCollator

    settings = dict(rows=make_rows(), max_steps=3, per_device_train_batch_size=3)
    packed = make_trainer(tiny_model_dir, tokenizer, tmp_path / "packed", loss_type, **settings)
    assert isinstance(packed.data_collator, PackedPairCollator)
    two_rows = make_trainer(tiny_model_dir, tokenizer, tmp_path / "rows", loss_type,
                            data_collator=PairCollator(tokenizer.pad_token_id), **settings)
    expected, actual = step_losses(two_rows), step_losses(packed)
    assert len(actual) == 3
    assert actual == pytest.approx(expected, abs=1e-5)


# bf16 autocast (fp32 master weights) vs fp32: the first three steps' losses agree within this relative tolerance
# (bf16 keeps ~3 significant digits per matmul; the log-softmax and the loss are fp32). Measured: <= 2.5e-4.
BF16_LOSS_RELATIVE_TOLERANCE = 1e-3


@pytest.mark.parametrize("weights", ["fp32", "bf16"])
def test_bf16_autocast_first_losses_match_fp32(tiny_model_dir, tokenizer, tmp_path, weights):
    fp32 = make_trainer(tiny_model_dir, tokenizer, tmp_path / "fp32", "slime", max_steps=3)
    mixed = make_trainer(tiny_model_dir, tokenizer, tmp_path / "bf16", "slime", max_steps=3, bf16=True,
                         weights=weights)
    trained = [p for p in mixed.model.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)  # fp32 master weights (LoRA + saved lm_head)
    expected, actual = step_losses(fp32), step_losses(mixed)
    assert actual == pytest.approx(expected, rel=BF16_LOSS_RELATIVE_TOLERANCE)
    assert actual != pytest.approx(expected, abs=1e-6)  # autocast did run in bf16
