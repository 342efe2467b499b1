"""Per-token log-probabilities of completion tokens, without building full-vocabulary tensors.

Every preference objective here (paper, section 3 and appendix A) needs log pi(t | x, y<t) for the
completion tokens of chosen and rejected answers only. Prompt and padding positions contribute
nothing, so the model's decoder runs once and the LM head is applied to completion positions only,
chunk by chunk (`chunked_head_log_probs`). For a plain linear head a custom autograd function keeps
either the chunks' softmax (when all of it fits in `PROBS_SAVE_BUDGET_BYTES`) or nothing, and writes
the gradient onehot - softmax in place; other heads run each chunk under activation checkpointing.
No `[2 * batch, tokens, vocab]` logits or log-softmax are ever built. On the tiny test model (where
the head dominates) one forward+backward costs ~1/3 of the full-logits computation.

Batch layout (the same as TRL's DPOTrainer): `input_ids` is `[2B, T]`, the B chosen rows first and
then the B rejected rows of the same pairs, right-padded, with a `completion_mask` that is 1 on
completion tokens (assistant text + end-of-turn token).
"""

from __future__ import annotations

import contextlib
import inspect
import logging

import torch
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)

# Elements of fp32 logits computed at once; the number of rows per chunk follows from the vocabulary.
# CPU: ~16 MiB, small chunks stay in cache and avoid page faults (measured fastest on the tiny model).
# GPU: ~256 MiB, large matmuls keep the device busy.
LOGITS_CHUNK_ELEMENTS = 2**22
LOGITS_CHUNK_ELEMENTS_GPU = 2**26
# The softmax of all completion positions is kept for the backward (instead of recomputing the LM head)
# when it fits in this many bytes.
PROBS_SAVE_BUDGET_BYTES = 2**30


def _rows_per_chunk(vocab_size: int, chunk_elements: int | None = None, device_type: str = "cpu") -> int:
    if chunk_elements is None:
        chunk_elements = LOGITS_CHUNK_ELEMENTS if device_type == "cpu" else LOGITS_CHUNK_ELEMENTS_GPU
    return max(1, chunk_elements // max(1, vocab_size))


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`log_softmax(logits)[..., index]` computed row-chunk by row-chunk.

    Equal to `torch.log_softmax(logits.float(), -1).gather(-1, index[..., None])[..., 0]`, but the
    full-vocabulary log-softmax is never built: each chunk gathers the target logit and subtracts a
    logsumexp over that chunk's rows, upcasting bf16/fp16 logits to fp32 one chunk at a time.
    Returns fp32 log-probs with `index`'s shape.
    """
    if logits.shape[:-1] != index.shape:
        raise ValueError(f"selective_log_softmax: logits {tuple(logits.shape)} do not match index {tuple(index.shape)}")
    vocab_size = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab_size)
    if flat_logits.shape[0] == 0:
        return flat_logits.new_zeros(index.shape, dtype=torch.float32)
    rows = _rows_per_chunk(vocab_size, device_type=logits.device.type)
    pieces = []
    # torch.split (not slicing): its backward concatenates the chunk gradients once, where each slice's
    # backward would allocate a full-size zero gradient.
    for chunk, chunk_index in zip(flat_logits.split(rows), index.reshape(-1, 1).split(rows)):
        chunk = chunk.float()
        target = chunk.gather(-1, chunk_index).squeeze(-1)
        pieces.append(target - torch.logsumexp(chunk, dim=-1))
    return torch.cat(pieces).view(index.shape)


# --------------------------------------------------------------------------------------------------------------------
# Tokenization of conversational pairs


def _chat_ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
    )
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


_warned_prefix_fallback = False


def completion_ids_from_template(tokenizer, prompt_messages: list[dict], completion_text: str,
                                 prompt_ids: list[int] | None = None) -> list[int]:
    """Completion tokens as the chat template renders them after the prompt.

    The template decides the tokens: they are the suffix of
    `apply_chat_template(prompt + [assistant])` after `apply_chat_template(prompt, add_generation_prompt=True)`.
    Tokens the template emits after the last end-of-turn token (ChatML's trailing "\\n") are dropped:
    they separate turns, and generation stops at the end-of-turn token, so the policy never emits them.
    If the prompt tokens are not a prefix of the full conversation's tokens (a template that renders
    the prompt differently alone, or tokens merging across the boundary), the completion falls back to
    `tokenizer(completion_text) + [eos]`, with a warning logged once.
    """
    global _warned_prefix_fallback
    if prompt_ids is None:
        prompt_ids = _chat_ids(tokenizer, prompt_messages, add_generation_prompt=True)
    full_ids = _chat_ids(
        tokenizer, list(prompt_messages) + [{"role": "assistant", "content": completion_text}], add_generation_prompt=False
    )
    eos_id = tokenizer.eos_token_id
    if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
        completion = full_ids[len(prompt_ids):]
        if eos_id is not None and eos_id in completion:
            last_eos = len(completion) - 1 - completion[::-1].index(eos_id)
            completion = completion[: last_eos + 1]
        elif eos_id is not None:
            completion = completion + [eos_id]
        return completion
    if not _warned_prefix_fallback:
        logger.warning(
            "tokenize_pair: the chat-templated prompt is not a prefix of the templated conversation; "
            "completions are tokenized on their own and end with eos (%r). Shown once.", tokenizer.eos_token
        )
        _warned_prefix_fallback = True
    completion = list(tokenizer(completion_text, add_special_tokens=False)["input_ids"])
    return completion + ([eos_id] if eos_id is not None else [])


def tokenize_pair(tokenizer, row: dict, *, max_length: int, max_prompt_length: int) -> dict:
    """Token ids of one preference row: `{"prompt_ids", "chosen_ids", "rejected_ids"}`.

    The prompt is the chat template of the prompt messages with the generation prompt appended; each
    completion is the assistant text plus the template's end-of-turn token (`completion_ids_from_template`).
    The prompt is truncated from the left to `max_prompt_length` (its end, next to the answer, is kept);
    each completion is truncated from the right so that prompt + completion <= `max_length`.
    """
    from prefopt.data import chosen_text, prompt_messages, rejected_text

    if max_prompt_length >= max_length:
        raise ValueError(f"max_prompt_length ({max_prompt_length}) must be smaller than max_length ({max_length})")
    messages = prompt_messages(row)
    prompt_ids = _chat_ids(tokenizer, messages, add_generation_prompt=True)
    chosen_ids = completion_ids_from_template(tokenizer, messages, chosen_text(row), prompt_ids)
    rejected_ids = completion_ids_from_template(tokenizer, messages, rejected_text(row), prompt_ids)
    if len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[len(prompt_ids) - max_prompt_length:]
    completion_budget = max_length - len(prompt_ids)
    return {
        "prompt_ids": prompt_ids,
        "chosen_ids": chosen_ids[:completion_budget],
        "rejected_ids": rejected_ids[:completion_budget],
    }


class PairCollator:
    """Stacks tokenized pairs into one `[2B, T]` batch: chosen rows first, then rejected rows, right-padded.

    Returns `input_ids`, `attention_mask` and `completion_mask` (1 on completion tokens), all `[2B, T]`.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("PairCollator: pad_token_id is None; set tokenizer.pad_token")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        sequences = []
        for side in ("chosen_ids", "rejected_ids"):
            for feature in features:
                prompt, completion = list(feature["prompt_ids"]), list(feature[side])
                sequences.append((prompt + completion, [0] * len(prompt) + [1] * len(completion)))
        length = max(len(ids) for ids, _ in sequences)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        completion_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, (ids, completion_flags) in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
            completion_mask[row, : len(ids)] = torch.tensor(completion_flags, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


# --------------------------------------------------------------------------------------------------------------------
# Log-probs from a model


def unwrap_causal_lm(model):
    """The `PreTrainedModel` inside DDP / DeepSpeed / PEFT wrappers (PEFT's layers stay injected in it)."""
    from transformers import PreTrainedModel

    inner = model
    for _ in range(8):
        if isinstance(inner, PreTrainedModel):
            break
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()  # peft.PeftModel
        elif isinstance(getattr(inner, "module", None), torch.nn.Module):
            inner = inner.module  # DistributedDataParallel, DeepSpeedEngine
        else:
            break
    return inner


class _LinearHeadLogProbs(torch.autograd.Function):
    """log_softmax(hidden @ weight.T + bias)[target] for `[N, H]` hidden states, chunk by chunk.

    Forward keeps, per chunk, either nothing but the inputs (`save_probs=False`: the backward
    recomputes the chunk's logits) or the chunk's softmax probabilities (`save_probs=True`: one
    `[rows, vocab]` fp32 buffer per chunk stays alive until backward, saving a matmul and two
    elementwise passes). The backward uses d log p_t / d logits = onehot(t) - softmax, written in place,
    so no `[N, vocab]` temporary beyond one chunk is created. The graph supports a single backward.
    """

    @staticmethod
    def forward(ctx, hidden_states, weight, bias, targets, rows, save_probs):
        token_logps = []
        saved_probs = []
        compute_dtype = None
        for hidden_chunk, target_chunk in zip(hidden_states.split(rows), targets.split(rows)):
            logits = torch.nn.functional.linear(hidden_chunk, weight, bias)
            compute_dtype = logits.dtype
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            del logits
            token_logps.append(log_probs.gather(-1, target_chunk[:, None]).squeeze(-1))
            if save_probs:
                saved_probs.append(log_probs.exp_())
            del log_probs
        ctx.rows, ctx.save_probs, ctx.compute_dtype, ctx.consumed = rows, save_probs, compute_dtype, False
        ctx.has_bias = bias is not None
        ctx.save_for_backward(hidden_states, weight, bias if bias is not None else hidden_states.new_empty(0), targets)
        ctx.saved_probs = saved_probs
        return torch.cat(token_logps) if token_logps else hidden_states.new_zeros((0,), dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad_token_logps):
        if ctx.consumed:
            raise RuntimeError("the LM-head log-prob graph supports a single backward (its buffers are reused)")
        ctx.consumed = True
        hidden_states, weight, bias, targets = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        dtype = ctx.compute_dtype
        weight_c = weight.to(dtype)
        grad_hidden = torch.empty_like(hidden_states) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_bias else None
        start = 0
        chunks = zip(hidden_states.split(ctx.rows), targets.split(ctx.rows), grad_token_logps.float().split(ctx.rows))
        for index, (hidden_chunk, target_chunk, grad_chunk) in enumerate(chunks):
            if ctx.save_probs:
                grad_logits = ctx.saved_probs[index]
                ctx.saved_probs[index] = None
            else:
                logits = torch.nn.functional.linear(hidden_chunk.to(dtype), weight_c, None if bias is None else bias.to(dtype))
                grad_logits = torch.softmax(logits.float(), dim=-1)
                del logits
            # d/d logits of sum_i g_i log p_i(t_i) = g_i (onehot(t_i) - p_i)
            grad_logits.mul_(-grad_chunk[:, None])
            grad_logits.scatter_add_(1, target_chunk[:, None], grad_chunk[:, None])
            grad_logits_c = grad_logits.to(dtype)
            end = start + hidden_chunk.shape[0]
            if need_hidden:
                grad_hidden[start:end] = (grad_logits_c @ weight_c).to(hidden_states.dtype)
            if need_weight:
                grad_weight.addmm_(grad_logits.t(), hidden_chunk.float())  # accumulated in fp32
            if need_bias:
                grad_bias += grad_logits.sum(0)
            start = end
            del grad_logits, grad_logits_c
        ctx.saved_probs = []
        return (grad_hidden,
                grad_weight.to(weight.dtype) if need_weight else None,
                grad_bias.to(bias.dtype) if need_bias else None,
                None, None, None)


def plain_linear_head(lm_head):
    """The `nn.Linear` that `lm_head` computes with (unwrapping PEFT's ModulesToSaveWrapper), else None."""
    try:
        from peft.utils.other import ModulesToSaveWrapper
    except ImportError:  # pragma: no cover - peft is a dependency
        ModulesToSaveWrapper = ()
    module = lm_head
    if ModulesToSaveWrapper and isinstance(module, ModulesToSaveWrapper):
        active = list(module.active_adapters)
        if module.disable_adapters or not active or any(name not in module.modules_to_save for name in active):
            module = module.original_module
        else:
            module = module.modules_to_save[active[0]]
    return module if type(module) is torch.nn.Linear else None


def _head_log_probs(lm_head, hidden_states: torch.Tensor, targets: torch.Tensor, softcap, logit_scale) -> torch.Tensor:
    logits = lm_head(hidden_states)
    if logit_scale != 1.0:
        logits = logits * logit_scale
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return selective_log_softmax(logits, targets)


def chunked_head_log_probs(lm_head, hidden_states: torch.Tensor, targets: torch.Tensor, *, vocab_size: int,
                           softcap: float | None = None, logit_scale: float = 1.0,
                           chunk_elements: int | None = None, save_probs: bool | None = None) -> torch.Tensor:
    """log pi(target | hidden) for `[N, H]` hidden states, the LM head applied `rows` at a time.

    A plain linear head (also inside PEFT's `ModulesToSaveWrapper`) goes through
    `_LinearHeadLogProbs`; it keeps the chunks' softmax for the backward when all of them fit in
    `PROBS_SAVE_BUDGET_BYTES` (`save_probs=None`), else recomputes them. Other heads (LoRA on the head,
    soft-capped or scaled logits) run each chunk under non-reentrant activation checkpointing. Either
    way at most one chunk of `[rows, vocab]` logits is built at a time beyond the saved softmax.
    """
    rows = _rows_per_chunk(vocab_size, chunk_elements, hidden_states.device.type)
    if hidden_states.shape[0] == 0:
        return hidden_states.new_zeros((0,), dtype=torch.float32)
    linear = plain_linear_head(lm_head) if (not softcap and logit_scale == 1.0) else None
    needs_grad = torch.is_grad_enabled() and (hidden_states.requires_grad or any(
        p.requires_grad for p in lm_head.parameters()))
    if linear is not None:
        if not needs_grad:
            with torch.no_grad():
                return _LinearHeadLogProbs.forward(_NoContext(), hidden_states, linear.weight, linear.bias, targets, rows, False)
        if save_probs is None:
            save_probs = hidden_states.shape[0] * vocab_size * 4 <= PROBS_SAVE_BUDGET_BYTES
        return _LinearHeadLogProbs.apply(hidden_states, linear.weight, linear.bias, targets, rows, save_probs)
    pieces = []
    for hidden_chunk, target_chunk in zip(hidden_states.split(rows), targets.split(rows)):
        args = (lm_head, hidden_chunk, target_chunk, softcap, logit_scale)
        if needs_grad:
            pieces.append(checkpoint(_head_log_probs, *args, use_reentrant=False))
        else:
            pieces.append(_head_log_probs(*args))
    return torch.cat(pieces)


class _NoContext:
    """Stands in for autograd's ctx when `_LinearHeadLogProbs.forward` runs without a graph."""

    def save_for_backward(self, *tensors):
        pass


def _accepts_kwarg(module, name: str) -> bool:
    try:
        parameters = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters


def completion_token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of completion tokens: `(token_logps [2B, T-1], mask [2B, T-1])`.

    `token_logps[:, t] = log pi(input_ids[:, t+1] | input_ids[:, :t+1])` (the usual shift), 0 where
    `mask = completion_mask[:, 1:]` is 0. The model's own forward runs (so DDP/DeepSpeed hooks and
    PEFT's adapters all apply) with `logits_to_keep=1`; a forward hook takes the decoder's final hidden
    states, and the LM head is applied to completion positions only (`chunked_head_log_probs`).
    """
    causal_lm = unwrap_causal_lm(model)
    decoder = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else None
    lm_head = causal_lm.get_output_embeddings()
    if decoder is None or lm_head is None or not _accepts_kwarg(causal_lm, "logits_to_keep"):
        # Models without a separable head: full logits, then the chunked log-softmax.
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
        mask = completion_mask[:, 1:].bool()
        token_logps = selective_log_softmax(logits, input_ids[:, 1:]) * mask
        return token_logps, mask

    captured = {}

    def keep_hidden_states(_module, _args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = decoder.register_forward_hook(keep_hidden_states)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    hidden_states = captured["hidden"][:, :-1]
    mask = completion_mask[:, 1:].bool()
    text_config = causal_lm.config.get_text_config() if hasattr(causal_lm.config, "get_text_config") else causal_lm.config
    logit_scale = getattr(text_config, "logit_scale", None)
    completion_logps = chunked_head_log_probs(
        lm_head,
        hidden_states[mask],
        input_ids[:, 1:][mask],
        vocab_size=lm_head.weight.shape[0] if hasattr(lm_head, "weight") else text_config.vocab_size,
        softcap=getattr(text_config, "final_logit_softcapping", None),
        logit_scale=1.0 if logit_scale is None else float(logit_scale),
    )
    # masked_scatter keeps the result connected to the graph even for an all-padding micro-batch.
    token_logps = completion_logps.new_zeros(mask.shape).masked_scatter(mask, completion_logps)
    return token_logps, mask


def split_chosen_rejected(token_logps: torch.Tensor, mask: torch.Tensor):
    """`(chosen_logps, chosen_mask, rejected_logps, rejected_mask)` from a `[2B, ...]` stacked batch."""
    if token_logps.shape[0] % 2:
        raise ValueError(f"split_chosen_rejected: expected an even number of rows, got {token_logps.shape[0]}")
    half = token_logps.shape[0] // 2
    return token_logps[:half], mask[:half], token_logps[half:], mask[half:]


@contextlib.contextmanager
def adapters_disabled(model):
    """The reference policy under LoRA: the same model with its adapters off (and no gradients)."""
    peft_model = model
    for _ in range(4):
        if hasattr(peft_model, "disable_adapter"):
            break
        peft_model = getattr(peft_model, "module", peft_model)
    if not hasattr(peft_model, "disable_adapter"):
        raise TypeError("adapters_disabled: the model has no PEFT adapter")
    with peft_model.disable_adapter(), torch.no_grad():
        yield
