"""Shared-prompt and packed pair batches give the two-row path's log-probs and gradients (fp32, 1e-5).

Tiny random Llama, Qwen2 (sliding window), Qwen3 and Gemma 3 (sliding and global layers) models are built
here; sequences are longer than the sliding windows, so the window's masking is exercised.
"""

from __future__ import annotations

import logging
import random

import pytest
import torch

from prefopt.logprobs import (
    PackedPairCollator,
    PairCollator,
    pair_collator,
    pair_token_logps,
    packed_attention_mask,
    supports_shared_prompt,
)

VOCAB = 96
TOLERANCE = 1e-5


def tiny_model(kind: str, attention: str):
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, pad_token_id=0, attn_implementation=attention)
    if kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        config, cls = LlamaConfig(num_hidden_layers=2, **common), LlamaForCausalLM
    elif kind == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        config = Qwen2Config(num_hidden_layers=3, use_sliding_window=True, sliding_window=5, max_window_layers=1,
                             **common)
        cls = Qwen2ForCausalLM
    elif kind == "qwen3":
        from transformers import Qwen3Config, Qwen3ForCausalLM

        config, cls = Qwen3Config(num_hidden_layers=2, head_dim=8, **common), Qwen3ForCausalLM
    elif kind == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        config = Gemma3TextConfig(num_hidden_layers=3, head_dim=8, sliding_window=5,
                                  layer_types=["sliding_attention", "full_attention", "sliding_attention"], **common)
        cls = Gemma3ForCausalLM
    else:
        raise ValueError(kind)
    torch.manual_seed(0)
    return cls(config).float().eval()


def random_features(count: int = 5, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def ids(low, high):
        return [rng.randrange(1, VOCAB) for _ in range(rng.randint(low, high))]

    return [{"prompt_ids": ids(3, 9), "chosen_ids": ids(1, 8), "rejected_ids": ids(1, 10)} for _ in range(count)]


def token_values(logps, mask):
    return [logps[row][mask[row].bool()] for row in range(logps.shape[0])]


def logps_and_grads(model, batch):
    model.zero_grad()
    chosen, chosen_mask, rejected, rejected_mask = pair_token_logps(model, batch)
    chosen, rejected = token_values(chosen, chosen_mask), token_values(rejected, rejected_mask)
    # A weighting that differs per token (by its place in its completion), so every token's gradient counts.
    objective = sum((v * torch.linspace(0.5, 1.5, len(v))).sum() for v in chosen)
    objective = objective + sum((v * torch.linspace(-1.0, 0.7, len(v))).sum() for v in rejected)
    objective.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return [v.detach() for v in chosen], [v.detach() for v in rejected], grads


def assert_same(expected, actual):
    for side in (0, 1):
        assert len(expected[side]) == len(actual[side])
        for a, b in zip(expected[side], actual[side]):
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, atol=TOLERANCE, rtol=0)
    assert expected[2].keys() == actual[2].keys()
    for name in expected[2]:
        torch.testing.assert_close(actual[2][name], expected[2][name], atol=TOLERANCE, rtol=1e-4, msg=name)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gemma3"])
def test_shared_prompt_and_packing_match_two_rows(kind, attention):
    model = tiny_model(kind, attention)
    assert supports_shared_prompt(model)
    features = random_features()
    expected = logps_and_grads(model, PairCollator(0)(features))
    for collator in (PackedPairCollator(0, row_tokens=None),                      # one shared-prompt sequence per row
                     PackedPairCollator(0, row_tokens=40),                        # a few pairs per row
                     PackedPairCollator(0, row_tokens=10_000),                    # every pair in one row
                     PackedPairCollator(0, shared_prompt=False, row_tokens=40)):  # packed, prompt repeated
        assert_same(expected, logps_and_grads(model, collator(features)))


def test_packed_layout_positions_and_mask():
    features = [{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10]},
                {"prompt_ids": [11], "chosen_ids": [12], "rejected_ids": [13, 14]}]
    batch = PackedPairCollator(0, row_tokens=100)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3, 0, 1, 1, 2]]
    assert batch["branch_ids"].tolist() == [[0, 0, 0, 1, 1, 2, 0, 1, 2, 2]]
    # chosen 8 is predicted from 7 (index 2), 9 from 8; rejected 10 from the prompt's last token 7, not from 9.
    assert batch["chosen_index"][0].tolist() == [2, 3] and batch["chosen_targets"][0].tolist() == [8, 9]
    assert batch["rejected_index"][0].tolist()[:1] == [2] and batch["rejected_targets"][0].tolist()[:1] == [10]
    assert batch["rejected_index"][1].tolist() == [6, 8]
    allowed = packed_attention_mask(batch["sequence_ids"], batch["branch_ids"], batch["position_ids"])[0, 0]
    assert allowed[5].tolist() == [True, True, True, False, False, True, False, False, False, False]
    assert allowed[9].tolist() == [False] * 6 + [True, False, True, True]
    window = packed_attention_mask(batch["sequence_ids"], batch["branch_ids"], batch["position_ids"], sliding_window=2)
    assert window[0, 0, 4].tolist() == [False] * 3 + [True, True] + [False] * 5


def test_packing_does_not_change_the_loss():
    from prefopt.losses import compute_loss

    model = tiny_model("llama", "sdpa")
    features = random_features(count=7, seed=3)
    losses = []
    with torch.no_grad():
        for collator in (PairCollator(0), PackedPairCollator(0, row_tokens=None), PackedPairCollator(0, row_tokens=30),
                         PackedPairCollator(0, row_tokens=10_000)):
            for method in ("slime", "simpo"):
                loss, metrics = compute_loss(method, *pair_token_logps(model, collator(features)))
                losses.append((method, float(loss), float(metrics["rewards/margins"])))
    for method in ("slime", "simpo"):
        values = [(loss, margin) for name, loss, margin in losses if name == method]
        for loss, margin in values[1:]:
            assert loss == pytest.approx(values[0][0], abs=1e-5)
            assert margin == pytest.approx(values[0][1], abs=1e-5)


def test_unsupported_model_falls_back_and_logs_once(caplog):
    model = tiny_model("llama", "sdpa")
    model.config._attn_implementation = "flex_attention"
    with caplog.at_level(logging.WARNING, logger="prefopt.logprobs"):
        assert isinstance(pair_collator(model, 0), PairCollator)
        assert isinstance(pair_collator(model, 0), PairCollator)
    assert sum("shared-prompt packing is off" in r.message for r in caplog.records) == 1
    assert isinstance(pair_collator(tiny_model("llama", "sdpa"), 0), PackedPairCollator)


def test_offline_evaluation_packed_equals_two_rows(tiny_model_dir, monkeypatch):
    import prefopt.logprobs
    from prefopt.demo_data import build_demo_dataset
    from prefopt.evaluation.offline import evaluate_offline
    from prefopt.models import load_model, load_tokenizer

    model, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    rows = build_demo_dataset(12, 0)
    settings = dict(max_length=128, max_prompt_length=96, batch_size=5, n_resamples=50)
    packed_summary, packed_examples = evaluate_offline(model, tokenizer, rows, **settings)
    monkeypatch.setattr(prefopt.logprobs, "supports_shared_prompt", lambda model: False)
    summary, examples = evaluate_offline(model, tokenizer, rows, **settings)
    assert packed_summary.keys() == summary.keys()
    for key, value in summary.items():
        if isinstance(value, float):
            assert packed_summary[key] == pytest.approx(value, abs=1e-5), key
    for packed, two_rows in zip(packed_examples, examples):
        assert packed["chosen_tokens"] == two_rows["chosen_tokens"] > 0
        for key in ("chosen_logp_mean", "rejected_logp_mean", "chosen_entropy_mean", "rejected_token_logp_min"):
            assert packed[key] == pytest.approx(two_rows[key], abs=1e-5), key
