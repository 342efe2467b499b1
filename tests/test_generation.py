"""generate_replies on the tiny Llama: order, determinism, left padding, stop tokens, truncation."""

from __future__ import annotations

import pytest

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

    monkeypatch.setattr(model, "generate", fake_generate)
    assert generate_replies(model, tokenizer, CONVERSATIONS[:2]) == ["Answer: 42", "Answer: 42"]


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
