"""Batched answer generation with the model's chat template (demo accuracy, MT-Bench, Arena-Hard).

    replies = generate_replies(model, tokenizer, [[{"role": "user", "content": "What is 2 + 2?"}]],
                               max_new_tokens=64)

Prompts are rendered with ``add_generation_prompt=True``, sorted by length so each batch wastes
little padding, left-padded (decoder-only models continue from the last position), and the
replies are returned in the caller's order. Greedy when ``temperature == 0``; otherwise sampled,
with the RNG seeded from ``seed`` and the batch index so a rerun gives the same text.

Greedy replies come from `greedy_generate`, which drops a row (and its KV cache) from the batch as
soon as it emits a stop token, where `model.generate` keeps computing every finished row until the
longest reply ends: on the embedded demo prompts about half of generate's decode work. It takes the
same tokens as `generate`'s greedy search (tested equal on Llama and Gemma 3 with sliding windows);
models whose generation config asks for logits processors (repetition penalty, suppressed tokens,
...) go through `generate`.
"""

from __future__ import annotations

import copy
import logging

import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def stop_token_ids(model, tokenizer) -> list[int]:
    """Token ids that end a reply: eos, the model's generation eos, and the template's end-of-turn."""
    from prefopt.models import TURN_END_TOKENS

    ids: list[int] = []

    def add(value):
        if value is None:
            return
        for token_id in value if isinstance(value, (list, tuple)) else [value]:
            if token_id is not None and int(token_id) not in ids:
                ids.append(int(token_id))

    add(tokenizer.eos_token_id)
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        add(generation_config.eos_token_id)
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    vocab = tokenizer.get_vocab()
    for turn_end in TURN_END_TOKENS.values():
        # Only tokens the template actually emits: a stray `<|im_end|>` in another vocab must not stop it.
        if turn_end in vocab and turn_end in template:
            add(vocab[turn_end])
    if not ids:
        raise ValueError("generate_replies: the tokenizer has no eos token and the template no end-of-turn token")
    return ids


def render_prompt_ids(tokenizer, conversation: list[dict], max_prompt_length: int | None = None) -> list[int]:
    """Token ids of `conversation` under the chat template, ending with the assistant header.

    With `max_prompt_length`, the prompt keeps its last tokens (the latest turn and the assistant
    header matter most for the reply), as TRL's ``keep_end`` truncation does.
    """
    if not conversation:
        raise ValueError("generate_replies: empty conversation")
    text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    # The template already writes bos where the model wants one.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_prompt_length is not None and len(ids) > max_prompt_length:
        ids = ids[-max_prompt_length:]
    return ids


def _left_pad(sequences: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, width - len(seq):] = 1
    return input_ids, attention_mask


def _generation_config(max_new_tokens, temperature, top_p, top_k, stop_ids, pad_token_id, model_defaults=None):
    from transformers import GenerationConfig

    sampling = temperature > 0
    if model_defaults is not None:
        # FastChat's gen_model_answer.py: generate(do_sample=T > 1e-4, temperature=T, max_new_tokens=N);
        # every other field (top_k, top_p, repetition penalty, ...) is the checkpoint's own.
        config = copy.deepcopy(model_defaults)
        config.update(max_new_tokens=max_new_tokens, do_sample=sampling,
                      temperature=float(temperature) if sampling else None,
                      eos_token_id=stop_ids, pad_token_id=pad_token_id, use_cache=True)
        return config
    # Every sampling field is set explicitly: unset fields would fall back to the checkpoint's own
    # generation_config.json (e.g. a recommended temperature or repetition penalty).
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=float(temperature) if sampling else None,
        top_p=float(top_p) if sampling else None,
        # top_k=0 turns the warper off; greedy leaves it unset (transformers flags it as unused).
        top_k=(int(top_k) if top_k else 0) if sampling else None,
        num_beams=1,
        repetition_penalty=1.0,
        eos_token_id=stop_ids,
        pad_token_id=pad_token_id,
        use_cache=True,
    )


# generation_config fields that add logits processors to greedy search; a model setting any of them
# is decoded by `model.generate`, which applies them.
PROCESSOR_FIELDS = ("repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "suppress_tokens",
                    "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id", "min_length",
                    "min_new_tokens", "sequence_bias", "encoder_repetition_penalty", "exponential_decay_length_penalty")


def uses_logits_processors(model) -> bool:
    """Whether `model`'s own generation config asks greedy search for a logits processor."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return False
    for field in PROCESSOR_FIELDS:
        value = getattr(config, field, None)
        if value in (None, 0, [], ()) or (field == "repetition_penalty" and value == 1.0):
            continue
        return True
    return False


def greedy_generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                    stop_ids: list[int]) -> list[list[int]]:
    """Greedy new tokens of each left-padded row, up to and including its first stop token; a finished
    row leaves the batch and the KV cache at once."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    rows = list(range(input_ids.shape[0]))
    new_tokens: list[list[int]] = [[] for _ in rows]
    stops = torch.tensor(stop_ids, device=input_ids.device)
    # Positions as generate computes them for left padding (padded slots get 1; they are masked out).
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                   past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    for step in range(max_new_tokens):
        tokens = logits.argmax(dim=-1)
        for row, token in zip(rows, tokens.tolist()):
            new_tokens[row].append(token)
        finished = torch.isin(tokens, stops)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        if bool(finished.any()):
            keep = (~finished).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows = [rows[index] for index in keep.tolist()]
            tokens, attention_mask = tokens[keep], attention_mask[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=1)
        positions = attention_mask.long().sum(-1, keepdim=True) - 1
        logits = model(input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=positions,
                       past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    return new_tokens


def generate_replies(
    model,
    tokenizer,
    conversations: list[list[dict]],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    max_prompt_length: int | None = None,
    model_sampling_defaults: bool = False,
    desc: str = "generating",
) -> list[str]:
    """One reply per conversation (list of ``{"role", "content"}`` messages), in input order.

    Only the new tokens are decoded, up to the first stop token (eos or the template's
    end-of-turn), with special tokens skipped and surrounding whitespace stripped.
    `top_k` (sampling only) is off unless given. With `model_sampling_defaults` (MT-Bench, as
    FastChat samples), only `temperature` and `max_new_tokens` are set and every other generation
    field, `top_p` and `top_k` included, is the model's ``generation_config``.
    """
    if temperature < 0:
        raise ValueError(f"generate_replies: temperature must be >= 0, got {temperature}")
    if batch_size < 1:
        raise ValueError(f"generate_replies: batch_size must be >= 1, got {batch_size}")
    if not conversations:
        return []
    stop_ids = stop_token_ids(model, tokenizer)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    model_defaults = None
    if model_sampling_defaults:
        from transformers import GenerationConfig

        model_defaults = getattr(model, "generation_config", None) or GenerationConfig()
    config = _generation_config(max_new_tokens, temperature, top_p, top_k, stop_ids, pad_token_id, model_defaults)
    pruned_greedy = not config.do_sample and model_defaults is None and not uses_logits_processors(model)

    prompts = [render_prompt_ids(tokenizer, conv) for conv in conversations]
    if max_prompt_length is not None:
        truncated = sum(len(ids) > max_prompt_length for ids in prompts)
        if truncated:
            log.warning("%s: %d of %d prompts are longer than %d tokens; their beginnings are cut",
                        desc, truncated, len(prompts), max_prompt_length)
        prompts = [ids[-max_prompt_length:] for ids in prompts]
    # Longest first: similar lengths share a batch, and an out-of-memory batch shows up at once.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    replies: list[str | None] = [None] * len(prompts)
    device = model.device
    was_training = model.training
    model.eval()
    stop_set = set(stop_ids)
    try:
        with tqdm(total=len(prompts), desc=desc, unit="reply") as progress:
            for batch_index, start in enumerate(range(0, len(order), batch_size)):
                indices = order[start:start + batch_size]
                input_ids, attention_mask = _left_pad([prompts[i] for i in indices], pad_token_id)
                input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
                cuda_devices = [device.index or 0] if device.type == "cuda" else []
                with torch.random.fork_rng(devices=cuda_devices), torch.inference_mode():
                    if config.do_sample:
                        torch.manual_seed(seed + batch_index)
                    if pruned_greedy:
                        new_tokens = greedy_generate(model, input_ids, attention_mask,
                                                     max_new_tokens=max_new_tokens, stop_ids=stop_ids)
                    else:
                        output = model.generate(
                            input_ids=input_ids, attention_mask=attention_mask, generation_config=config
                        )
                        new_tokens = output[:, input_ids.shape[1]:].tolist()
                for i, tokens in zip(indices, new_tokens):
                    end = next((pos for pos, tok in enumerate(tokens) if tok in stop_set), len(tokens))
                    replies[i] = tokenizer.decode(tokens[:end], skip_special_tokens=True).strip()
                progress.update(len(indices))
    finally:
        model.train(was_training)
    return replies  # type: ignore[return-value]
