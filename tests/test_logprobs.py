"""prefopt.logprobs: chunked log-softmax, pair tokenization, the pair collator, completion log-probs."""

from __future__ import annotations

import logging

import pytest
import torch

import prefopt.logprobs as logprobs
from prefopt.logprobs import (
    PairCollator,
    adapters_disabled,
    completion_token_logps,
    selective_log_softmax,
    split_chosen_rejected,
    tokenize_pair,
)

PAIRS = [
    ("What is 17 + 25?", "17 + 25 = 42.\n\nAnswer: 42", "17 + 25 = 43.\n\nAnswer: 43"),
    ("Sort 9, 2, 5 ascending.", "2, 5, 9\n\nAnswer: 2, 5, 9", "2, 9, 5\n\nAnswer: 2, 9, 5"),
    ("Convert 3 km to metres.", "3 km = 3000 m.\n\nAnswer: 3000", "3 km = 300 m.\n\nAnswer: 300"),
    ("Reverse the word 'stone'.", "Reversed: enots\n\nAnswer: enots", "Reversed: etons\n\nAnswer: etons"),
]


def make_row(index, prompt, chosen, rejected):
    user = {"role": "user", "content": prompt}
    return {"prompt_id": f"pair-{index}", "prompt": prompt,
            "chosen": [user, {"role": "assistant", "content": chosen}],
            "rejected": [user, {"role": "assistant", "content": rejected}],
            "score_chosen": 1.0, "score_rejected": 0.0}


ROWS = [make_row(i, *pair) for i, pair in enumerate(PAIRS)]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from prefopt.models import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from prefopt.models import load_model

    return load_model(tiny_model_dir).eval()


def naive_token_logps(model, input_ids, attention_mask, completion_mask):
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    logps = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return logps * completion_mask[:, 1:]


# ------------------------------------------------------------------------------------------- selective_log_softmax


@pytest.mark.parametrize("chunk_elements", [2**25, 1000])
def test_selective_log_softmax_matches_log_softmax_fp32(monkeypatch, chunk_elements):
    monkeypatch.setattr(logprobs, "LOGITS_CHUNK_ELEMENTS", chunk_elements)
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 7, 301, generator=generator) * 5).requires_grad_()
    index = torch.randint(0, 301, (3, 7), generator=generator)
    ours = selective_log_softmax(logits, index)
    expected = torch.log_softmax(logits, -1).gather(-1, index[..., None]).squeeze(-1)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    (grad_ours,) = torch.autograd.grad(ours.sum(), logits)
    (grad_expected,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(grad_ours, grad_expected, atol=1e-6, rtol=1e-5)


def test_selective_log_softmax_bf16_upcasts_per_chunk(monkeypatch):
    monkeypatch.setattr(logprobs, "LOGITS_CHUNK_ELEMENTS", 500)
    generator = torch.Generator().manual_seed(1)
    logits = (torch.randn(4, 5, 257, generator=generator) * 4).to(torch.bfloat16)
    index = torch.randint(0, 257, (4, 5), generator=generator)
    ours = selective_log_softmax(logits, index)
    assert ours.dtype == torch.float32
    exact = torch.log_softmax(logits.float(), -1).gather(-1, index[..., None]).squeeze(-1)
    torch.testing.assert_close(ours, exact, atol=1e-5, rtol=1e-5)
    # and within bf16 resolution of a bf16 log_softmax
    bf16_reference = torch.log_softmax(logits, -1).gather(-1, index[..., None]).squeeze(-1).float()
    torch.testing.assert_close(ours, bf16_reference, atol=0.1, rtol=0.02)


def test_selective_log_softmax_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="do not match"):
        selective_log_softmax(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


# ------------------------------------------------------------------------------------------- tokenize_pair


def test_tokenize_pair_prefix_property_and_end_of_turn(tokenizer):
    row = ROWS[0]
    pair = tokenize_pair(tokenizer, row, max_length=512, max_prompt_length=256)
    expected_prompt = tokenizer.apply_chat_template(row["chosen"][:-1], add_generation_prompt=True, tokenize=True,
                                                    return_dict=False)
    assert pair["prompt_ids"] == list(expected_prompt)
    for side in ("chosen", "rejected"):
        full = list(tokenizer.apply_chat_template(row[side], tokenize=True, return_dict=False))
        sequence = pair["prompt_ids"] + pair[f"{side}_ids"]
        assert full[: len(sequence)] == sequence  # the template decides the completion tokens
        assert pair[f"{side}_ids"][-1] == tokenizer.eos_token_id  # <|im_end|> is trained
        assert tokenizer.decode(pair[f"{side}_ids"]) == row[side][-1]["content"] + "<|im_end|>"
        # only the template's turn separator after <|im_end|> is left out
        assert tokenizer.decode(full[len(sequence):]) == "\n"


def test_tokenize_pair_truncation(tokenizer):
    row = make_row(9, "Explain this. " * 40, "A long chosen answer. " * 30, "Short.")
    untruncated = tokenize_pair(tokenizer, row, max_length=4096, max_prompt_length=2048)
    pair = tokenize_pair(tokenizer, row, max_length=96, max_prompt_length=48)
    assert len(pair["prompt_ids"]) == 48
    # left truncation keeps the end of the prompt (the generation prompt next to the answer)
    assert pair["prompt_ids"] == untruncated["prompt_ids"][-48:]
    assert len(pair["prompt_ids"]) + len(pair["chosen_ids"]) == 96
    assert pair["chosen_ids"] == untruncated["chosen_ids"][:48]  # right truncation
    assert pair["rejected_ids"] == untruncated["rejected_ids"]  # short: untouched
    with pytest.raises(ValueError, match="max_prompt_length"):
        tokenize_pair(tokenizer, row, max_length=64, max_prompt_length=64)


def test_tokenize_pair_falls_back_when_prefix_fails(tokenizer, caplog, monkeypatch):
    import copy

    odd = copy.deepcopy(tokenizer)
    # The generation prompt differs from how the template renders an assistant turn: no prefix property.
    odd.chat_template = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ':\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    monkeypatch.setattr(logprobs, "_warned_prefix_fallback", False)
    with caplog.at_level(logging.WARNING, logger="prefopt.logprobs"):
        pair = tokenize_pair(odd, ROWS[1], max_length=512, max_prompt_length=256)
    assert "not a prefix" in caplog.text
    expected = odd(PAIRS[1][1], add_special_tokens=False)["input_ids"] + [odd.eos_token_id]
    assert pair["chosen_ids"] == expected


# ------------------------------------------------------------------------------------------- collator


def test_pair_collator_layout():
    features = [
        {"prompt_ids": [5, 6], "chosen_ids": [7, 8, 9], "rejected_ids": [10]},
        {"prompt_ids": [11], "chosen_ids": [12], "rejected_ids": [13, 14]},
    ]
    batch = PairCollator(pad_token_id=0)(features)
    assert batch["input_ids"].tolist() == [
        [5, 6, 7, 8, 9],     # chosen of pair 0
        [11, 12, 0, 0, 0],   # chosen of pair 1
        [5, 6, 10, 0, 0],    # rejected of pair 0
        [11, 13, 14, 0, 0],  # rejected of pair 1
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 1, 0, 0]]
    padded = PairCollator(pad_token_id=0, pad_to_multiple_of=8)(features)
    assert padded["input_ids"].shape == (4, 8)


# ------------------------------------------------------------------------------------------- completion log-probs


@pytest.fixture(scope="module")
def batch(tokenizer):
    features = [tokenize_pair(tokenizer, row, max_length=256, max_prompt_length=128) for row in ROWS]
    return PairCollator(tokenizer.pad_token_id)(features)


@pytest.mark.parametrize("chunk_elements", [2**25, 49152 * 7])
def test_completion_token_logps_matches_full_logits(tiny_model, batch, monkeypatch, chunk_elements):
    monkeypatch.setattr(logprobs, "LOGITS_CHUNK_ELEMENTS", chunk_elements)  # 7 rows per chunk: many chunks
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    token_logps, mask = completion_token_logps(tiny_model, *args)
    assert token_logps.shape == mask.shape == (batch["input_ids"].shape[0], batch["input_ids"].shape[1] - 1)
    assert mask.equal(batch["completion_mask"][:, 1:].bool())
    with torch.no_grad():
        expected = naive_token_logps(tiny_model, *args)
    torch.testing.assert_close(token_logps, expected, atol=2e-5, rtol=1e-5)
    assert (token_logps[~mask] == 0).all()


@pytest.mark.parametrize("head", ["saved_probs", "recomputed", "lora_on_head_checkpointed"])
def test_completion_token_logps_under_lora_with_lm_head_saved(tiny_model_dir, batch, monkeypatch, head):
    from peft import get_peft_model

    from prefopt.models import LORA_TARGET_MODULES, load_model, lora_config

    monkeypatch.setattr(logprobs, "LOGITS_CHUNK_ELEMENTS", 49152 * 16)
    if head == "recomputed":
        monkeypatch.setattr(logprobs, "PROBS_SAVE_BUDGET_BYTES", 0)
    torch.manual_seed(0)
    if head == "lora_on_head_checkpointed":  # a LoRA-wrapped head is not a plain Linear: generic path
        config = lora_config(r=4, alpha=8, dropout=0.0, target_modules=LORA_TARGET_MODULES + ["lm_head"],
                             modules_to_save=None)
    else:
        config = lora_config(r=4, alpha=8, dropout=0.0, target_modules=LORA_TARGET_MODULES, modules_to_save=["lm_head"])
    peft_model = get_peft_model(load_model(tiny_model_dir), config)
    head_module = peft_model.get_base_model().get_output_embeddings()
    assert (logprobs.plain_linear_head(head_module) is None) == (head == "lora_on_head_checkpointed")
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
            if "modules_to_save" in name:
                parameter.add_(0.01 * torch.randn_like(parameter))
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])

    ours, mask = completion_token_logps(peft_model, *args)
    expected = naive_token_logps(peft_model, *args)
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-5)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    ours_grads = torch.autograd.grad(ours.sum(), trainable)
    expected_grads = torch.autograd.grad(expected.sum(), trainable)
    for ours_grad, expected_grad in zip(ours_grads, expected_grads):
        torch.testing.assert_close(ours_grad, expected_grad, atol=1e-4, rtol=1e-3)

    # adapters off = the base model, including the original (not the saved copy of the) lm_head
    with adapters_disabled(peft_model):
        reference, _ = completion_token_logps(peft_model, *args)
    base = load_model(tiny_model_dir).eval()
    with torch.no_grad():
        base_logps = naive_token_logps(base, *args)
    torch.testing.assert_close(reference, base_logps, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(reference, ours.detach(), atol=1e-3)


def test_split_chosen_rejected(batch):
    token_logps = torch.arange(8 * 3, dtype=torch.float32).view(8, 3)
    mask = torch.ones(8, 3, dtype=torch.bool)
    chosen, chosen_mask, rejected, rejected_mask = split_chosen_rejected(token_logps, mask)
    assert chosen.equal(token_logps[:4]) and rejected.equal(token_logps[4:])
    assert chosen_mask.shape == rejected_mask.shape == (4, 3)
    with pytest.raises(ValueError, match="even"):
        split_chosen_rejected(token_logps[:3], mask[:3])


@pytest.mark.parametrize("save_probs", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_linear_head_values_and_gradients(save_probs, dtype):
    from prefopt.logprobs import chunked_head_log_probs

    generator = torch.Generator().manual_seed(3)
    head = torch.nn.Linear(16, 301, bias=True).to(dtype)
    hidden = torch.randn(23, 16, generator=generator).to(dtype).requires_grad_()
    targets = torch.randint(0, 301, (23,), generator=generator)
    upstream = torch.randn(23, generator=generator)

    ours = chunked_head_log_probs(head, hidden, targets, vocab_size=301, chunk_elements=301 * 5, save_probs=save_probs)
    ours_grads = torch.autograd.grad((ours * upstream).sum(), [hidden, head.weight, head.bias])
    expected = torch.log_softmax(head(hidden).float(), -1).gather(-1, targets[:, None]).squeeze(-1)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), [hidden, head.weight, head.bias])
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    torch.testing.assert_close(ours, expected, **tolerance)
    for ours_grad, expected_grad in zip(ours_grads, expected_grads):
        assert ours_grad.dtype == expected_grad.dtype
        torch.testing.assert_close(ours_grad.float(), expected_grad.float(), **tolerance)


@pytest.mark.parametrize("save_probs", [True, False])
def test_chunked_linear_head_under_cpu_autocast(save_probs):
    """fp32 weights under CPU bf16 autocast (the trainer's mixed precision): bf16 matmuls, fp32 log-softmax,
    fp32 gradients for fp32 parameters; equal to autocast's own full-logits computation up to bf16 rounding
    of the accumulation order, and to fp32 within bf16's precision."""
    from prefopt.logprobs import chunked_head_log_probs

    generator = torch.Generator().manual_seed(5)
    head = torch.nn.Linear(32, 301, bias=True)
    hidden = torch.randn(23, 32, generator=generator).requires_grad_()
    targets = torch.randint(0, 301, (23,), generator=generator)
    upstream = torch.randn(23, generator=generator)
    params = [hidden, head.weight, head.bias]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = chunked_head_log_probs(head, hidden, targets, vocab_size=301, chunk_elements=301 * 5,
                                      save_probs=save_probs)
        autocast_logits = head(hidden)
    assert ours.dtype == torch.float32 and autocast_logits.dtype == torch.bfloat16
    ours_grads = torch.autograd.grad((ours * upstream).sum(), params)
    reference = torch.log_softmax(autocast_logits.float(), -1).gather(-1, targets[:, None]).squeeze(-1)
    reference_grads = torch.autograd.grad((reference * upstream).sum(), params)
    fp32 = torch.log_softmax(head(hidden), -1).gather(-1, targets[:, None]).squeeze(-1)
    fp32_grads = torch.autograd.grad((fp32 * upstream).sum(), params)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)  # the same bf16 logits, fp32 log-softmax
    torch.testing.assert_close(ours, fp32, atol=5e-2, rtol=2e-2)
    for ours_grad, reference_grad, fp32_grad in zip(ours_grads, reference_grads, fp32_grads):
        assert ours_grad.dtype == torch.float32
        torch.testing.assert_close(ours_grad, reference_grad, atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(ours_grad, fp32_grad, atol=3e-2, rtol=3e-2)
