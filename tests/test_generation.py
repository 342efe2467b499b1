"""generate_replies on the tiny Llama: order, determinism, left padding, stop tokens, truncation."""

from __future__ import annotations

import pytest

from prefopt.evaluation import generation
from prefopt.evaluation.generation import generate_replies, render_prompt_ids, stop_token_ids

CONVERSATIONS = [
    [{"role": "user", "content": "What is 17 + 25?"}],
    [{"role": "user", "content": "Sort these words alphabetically: zebra, apple, mango, kiwi, banana, cherry."}],
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Convert 3 km to metres."},
        {"role": "assistant", "content": "3000 m"},
        {"role": "user", "content": "And 2.5 km?"},
    ],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The tiny Llama with its layer weights drawn larger: at init it repeats the prompt's last token
    ("\\n" after the assistant header), which would make every reply the same empty string."""
    import torch

    from prefopt.models import load_for_inference

    model, tokenizer = load_for_inference(tiny_model_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.model.layers.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model, tokenizer


def test_one_reply_per_conversation_in_order_and_padding_invariant(tiny):
    model, tokenizer = tiny
    batched = generate_replies(model, tokenizer, CONVERSATIONS, max_new_tokens=8, batch_size=3)
    single = [generate_replies(model, tokenizer, [conv], max_new_tokens=8, batch_size=1)[0] for conv in CONVERSATIONS]
    assert len(batched) == len(CONVERSATIONS)
    assert all(isinstance(reply, str) for reply in batched)
    # Different prompts give different replies, so equality also checks that the order was restored.
    assert len(set(single)) > 1
    assert batched == single


def test_greedy_is_deterministic(tiny):
    model, tokenizer = tiny
    first = generate_replies(model, tokenizer, CONVERSATIONS, max_new_tokens=6, batch_size=2)
    second = generate_replies(model, tokenizer, CONVERSATIONS, max_new_tokens=6, batch_size=2)
    assert first == second


def test_sampling_is_seeded(tiny):
    model, tokenizer = tiny
    kwargs = dict(max_new_tokens=8, temperature=1.0, top_p=0.95, batch_size=2)
    first = generate_replies(model, tokenizer, CONVERSATIONS, seed=3, **kwargs)
    again = generate_replies(model, tokenizer, CONVERSATIONS, seed=3, **kwargs)
    other = generate_replies(model, tokenizer, CONVERSATIONS, seed=4, **kwargs)
    assert first == again
    assert first != other


def test_stop_tokens_include_template_end_of_turn(tiny):
    model, tokenizer = tiny
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in stop_token_ids(model, tokenizer)


def test_reply_stops_at_end_of_turn(tiny, monkeypatch):
    model, tokenizer = tiny
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    words = tokenizer("Answer: 42", add_special_tokens=False)["input_ids"]
    trailing = tokenizer(" garbage after the turn", add_special_tokens=False)["input_ids"]
    import torch

    def fake_generate(input_ids, attention_mask, generation_config):
        assert not generation_config.do_sample
        new = torch.tensor([words + [im_end] + trailing] * input_ids.shape[0])
        return torch.cat([input_ids, new], dim=1)

    def fake_greedy(model, input_ids, attention_mask, *, max_new_tokens, stop_ids):
        assert im_end in stop_ids
        return [words + [im_end] + trailing] * input_ids.shape[0]

    monkeypatch.setattr(model, "generate", fake_generate)
    monkeypatch.setattr(generation, "greedy_generate", fake_greedy)
    assert generate_replies(model, tokenizer, CONVERSATIONS[:2]) == ["Answer: 42", "Answer: 42"]
    monkeypatch.setattr(generation, "uses_logits_processors", lambda model: True)  # through model.generate
    assert generate_replies(model, tokenizer, CONVERSATIONS[:2]) == ["Answer: 42", "Answer: 42"]


def _tiny_gemma3(tokenizer):
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=5,
                              layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                              max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(3)
    model = Gemma3ForCausalLM(config).float().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(8.0)  # sharper distributions: varied replies instead of one repeated token
    return model


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_pruned_greedy_equals_generate(tiny, kind, monkeypatch):
    """Dropping finished rows from the batch and cache gives generate's greedy tokens (sliding windows too)."""
    import torch

    model, tokenizer = tiny
    if kind == "gemma3":
        model = _tiny_gemma3(tokenizer)
    prompts = [generation.render_prompt_ids(tokenizer, conv) for conv in CONVERSATIONS]
    input_ids, attention_mask = generation._left_pad(prompts, tokenizer.pad_token_id)
    with torch.inference_mode():
        free = generation.greedy_generate(model, input_ids, attention_mask, max_new_tokens=12, stop_ids=[-1])
        # The first row's third token stands in for the end of turn: rows then stop at different steps.
        stop_token = free[0][2]
        tokens = generation.greedy_generate(model, input_ids, attention_mask, max_new_tokens=12, stop_ids=[stop_token])
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=generation.
                                _generation_config(12, 0.0, 1.0, None, [stop_token], tokenizer.pad_token_id))
    lengths = [len(row) for row in tokens]
    assert len(set(lengths)) > 1, lengths  # rows really left the batch at different steps
    for row, expected in zip(tokens, output[:, input_ids.shape[1]:].tolist()):
        assert row == expected[:len(row)]
        assert row[-1] == stop_token or len(row) == 12
    monkeypatch.setattr(generation, "stop_token_ids", lambda model, tokenizer: [stop_token])
    pruned = generate_replies(model, tokenizer, CONVERSATIONS, max_new_tokens=12, batch_size=4)
    monkeypatch.setattr(generation, "uses_logits_processors", lambda model: True)  # through model.generate
    assert pruned == generate_replies(model, tokenizer, CONVERSATIONS, max_new_tokens=12, batch_size=4)


def test_prompt_truncation_keeps_the_end(tiny):
    _, tokenizer = tiny
    full = render_prompt_ids(tokenizer, CONVERSATIONS[3])
    cut = render_prompt_ids(tokenizer, CONVERSATIONS[3], max_prompt_length=10)
    assert cut == full[-10:]
    assert tokenizer.decode(full).endswith("<|im_start|>assistant\n")


def test_empty_input_and_bad_arguments(tiny):
    model, tokenizer = tiny
    assert generate_replies(model, tokenizer, []) == []
    with pytest.raises(ValueError, match="temperature"):
        generate_replies(model, tokenizer, CONVERSATIONS, temperature=-1.0)
