"""Per-token log-probabilities of completion tokens, without building full-vocabulary tensors.

Every preference objective here (paper, section 3 and appendix A) needs log pi(t | x, y<t) for the
completion tokens of chosen and rejected answers only. Prompt and padding positions contribute
nothing, so the model's decoder runs once and the LM head is applied to completion positions only,
chunk by chunk (`chunked_head_log_probs`). For a plain linear head a custom autograd function keeps
either the chunks' softmax (when all of it fits in `PROBS_SAVE_BUDGET_BYTES`) or nothing, and writes
the gradient onehot - softmax in place; other heads run each chunk under activation checkpointing.
No `[2 * batch, tokens, vocab]` logits or log-softmax are ever built. On the tiny test model (where
the head dominates) one forward+backward costs ~1/3 of the full-logits computation.

Batch layouts (docs/batching.md): `PackedPairCollator` (the trainer's default) writes each pair as one
`prompt + chosen + rejected` sequence, the rejected branch masked from the chosen one and its positions
restarting at the prompt's end, several sequences packed per row; `PairCollator` (the fallback, as TRL's
DPOTrainer) writes `[2B, T]` rows, the B chosen rows first and then the B rejected rows of the same pairs,
right-padded, with a `completion_mask` that is 1 on completion tokens (assistant text + end-of-turn token).
`pair_token_logps` takes either and returns per-pair `[B, tokens]` chosen and rejected log-probs.
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


def _sdpa_fp32_on_cpu(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention, run in fp32 when bf16 tensors reach it on the CPU (bf16 autocast).

    On the CPU, torch's fused attention is 2-5x slower in bf16 than in fp32, backward above all (measured on
    the development machine's AMD EPYC with avx512_bf16, torch 2.13, SmolLM2's 9 heads x 64 dims): in a bf16
    autocast step it cost more than the bf16 matmuls saved. The projections around it stay in bf16.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.device.type != "cpu" or query.dtype != torch.bfloat16:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    with torch.autocast("cpu", enabled=False):
        output, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                                 **kwargs)
    return output.to(query.dtype), weights


def use_fp32_attention_on_cpu() -> None:
    """Route transformers' "sdpa" attention through `_sdpa_fp32_on_cpu` (every model in this process; a no-op
    off the CPU or outside bf16). Called by PreferenceTrainer under mixed precision."""
    from transformers import AttentionInterface

    AttentionInterface.register("sdpa", _sdpa_fp32_on_cpu)


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
        # Under autocast the matmuls run in its dtype (the weight cast once, not per chunk); else in the weight's.
        device_type = hidden_states.device.type
        autocast = torch.is_autocast_enabled(device_type)
        compute_dtype = torch.get_autocast_dtype(device_type) if autocast else weight.dtype
        weight_c = weight.to(compute_dtype)
        bias_c = None if bias is None else bias.to(compute_dtype)
        with torch.autocast(device_type, enabled=False):
            for hidden_chunk, target_chunk in zip(hidden_states.split(rows), targets.split(rows)):
                logits = torch.nn.functional.linear(hidden_chunk.to(compute_dtype), weight_c, bias_c)
                log_probs = torch.log_softmax(logits.float(), dim=-1)  # always fp32
                del logits
                token_logps.append(log_probs.gather(-1, target_chunk[:, None]).squeeze(-1))
                if save_probs:
                    saved_probs.append(log_probs.exp_())
                del log_probs
        del weight_c
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
            if need_weight:  # computed in the forward's dtype, accumulated in fp32
                if dtype == torch.float32:
                    grad_weight.addmm_(grad_logits.t(), hidden_chunk.float())
                else:
                    grad_weight += grad_logits_c.t() @ hidden_chunk.to(dtype)
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


def _no_positions(input_ids: torch.Tensor) -> torch.Tensor:
    """`logits_to_keep` that keeps no position: the model's own LM head computes nothing (ours runs after).

    Not `logits_to_keep=1`: the model would apply its head to `hidden[:, -1:, :]`, a non-contiguous
    slice, and torch 2.13's CPU `linear` with bf16 weights on such an input expands the weight into a
    batched matmul, copying it once per row: ~9 s for 16 rows of SmolLM2 (0.05 s on a contiguous
    input), which made the bf16 path several times slower than fp32 on the CPU.
    """
    return torch.zeros(0, dtype=torch.long, device=input_ids.device)


def completion_token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of completion tokens: `(token_logps [2B, T-1], mask [2B, T-1])`.

    `token_logps[:, t] = log pi(input_ids[:, t+1] | input_ids[:, :t+1])` (the usual shift), 0 where
    `mask = completion_mask[:, 1:]` is 0. The model's own forward runs (so DDP/DeepSpeed hooks and
    PEFT's adapters all apply) keeping no logits (`_no_positions`); a forward hook takes the decoder's
    final hidden states, and the LM head is applied to completion positions only (`chunked_head_log_probs`).
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
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
              logits_to_keep=_no_positions(input_ids))
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


# --------------------------------------------------------------------------------------------------------------------
# One sequence per pair (shared prompt) and packed rows
#
# A pair becomes one sequence, prompt + chosen + rejected: the rejected tokens see the prompt but not the chosen
# tokens, and their position ids restart at the prompt's end, so each branch is computed exactly as if it followed
# the prompt alone (the prompt is encoded once instead of twice). Several such sequences are packed into one row
# with a block-diagonal mask, so a batch carries (almost) no padding. The log-probs are gathered back into per-pair
# `[B, tokens]` tensors in the pairs' own order, so the losses see the same tensors whatever the packing.

# Tokens per packed row, about: a batch of N tokens is packed into ceil(N / PACKED_ROW_TOKENS) balanced rows.
# Attention in a packed row costs (row length)^2 whatever the mask hides, so rows stay short; 256 measured
# faster than 512 and than one sequence per row at the demo shape on CPU (docs/batching.md).
PACKED_ROW_TOKENS = 256
# Architectures whose decoder takes a custom 4D mask (and, where they have sliding-window layers, a
# {layer type: mask} dict) with explicit position ids; each is tested against the two-row path (tests/test_packing.py).
SHARED_PROMPT_MODEL_TYPES = {"llama": False, "qwen2": True, "qwen3": True, "gemma3_text": True}  # value: takes a dict
SHARED_PROMPT_ATTENTION = ("sdpa", "eager")

_warned_no_shared_prompt: set[str] = set()


def _text_config(causal_lm):
    config = causal_lm.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def supports_shared_prompt(model) -> bool:
    """True if `model` can take the shared-prompt / packed batches of `PackedPairCollator`; logs once if not."""
    causal_lm = unwrap_causal_lm(model)
    config = _text_config(causal_lm)
    model_type = getattr(config, "model_type", None)
    attention = getattr(config, "_attn_implementation", None)
    reason = None
    if model_type not in SHARED_PROMPT_MODEL_TYPES:
        reason = f"architecture {model_type!r} is not one of {sorted(SHARED_PROMPT_MODEL_TYPES)}"
    elif attention not in SHARED_PROMPT_ATTENTION:
        reason = f"attention implementation {attention!r} takes no custom 4D mask"
    elif getattr(config, "use_bidirectional_attention", False):
        reason = "bidirectional attention"
    elif not _accepts_kwarg(causal_lm, "logits_to_keep") or causal_lm.get_output_embeddings() is None:
        reason = "no separable LM head"
    if reason is None:
        return True
    key = f"{model_type}/{attention}"
    if key not in _warned_no_shared_prompt:
        logger.warning("shared-prompt packing is off for this model (%s): each pair runs as two padded rows. "
                       "Shown once.", reason)
        _warned_no_shared_prompt.add(key)
    return False


class PackedPairCollator:
    """Pairs as `prompt + chosen + rejected` sequences (or, with `shared_prompt=False`, `prompt + chosen` and
    `prompt + rejected`), packed into ceil(total tokens / `row_tokens`) balanced rows (`None`: one sequence
    per row).

    Returns `input_ids`, `position_ids`, `sequence_ids` (which sequence of the row a token belongs to, -1 on
    padding) and `branch_ids` (0 prompt, 1 chosen, 2 rejected, -1 padding), all `[R, L]`, and per side
    (`chosen`, `rejected`) `{side}_index` (flat index into `R * L` of the hidden state that predicts each token:
    the previous token of the same branch, the prompt's last token for the first one), `{side}_targets` and
    `{side}_mask`, all `[B, tokens]` in the pairs' order. Rows are padded to the longest row.
    """

    def __init__(self, pad_token_id: int, *, shared_prompt: bool = True, row_tokens: int | None = PACKED_ROW_TOKENS):
        if pad_token_id is None:
            raise ValueError("PackedPairCollator: pad_token_id is None; set tokenizer.pad_token")
        self.pad_token_id = int(pad_token_id)
        self.shared_prompt = shared_prompt
        self.row_tokens = row_tokens

    def _sequences(self, features):
        # (pair index, prompt ids, [(branch id, completion ids), ...])
        for pair, feature in enumerate(features):
            prompt = list(feature["prompt_ids"])
            chosen, rejected = list(feature["chosen_ids"]), list(feature["rejected_ids"])
            if self.shared_prompt:
                yield pair, prompt, [(1, chosen), (2, rejected)]
            else:
                yield pair, prompt, [(1, chosen)]
                yield pair, prompt, [(2, rejected)]

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        sequences = list(self._sequences(features))
        lengths = [len(prompt) + sum(len(ids) for _, ids in branches) for _, prompt, branches in sequences]
        # Longest first, each into the currently shortest of ceil(total / row_tokens) rows: balanced rows (a row
        # of 500 tokens next to one of 60 would pad the second to 500), each at most row_tokens + the longest
        # sequence. Ties keep the input order, so the layout is deterministic.
        count = len(sequences) if not self.row_tokens else max(1, -(-sum(lengths) // self.row_tokens))
        count = min(count, len(sequences))
        rows: list[list[int]] = [[] for _ in range(count)]
        fill = [0] * count
        for index in sorted(range(len(sequences)), key=lambda i: -lengths[i]):
            target = min(range(count), key=lambda r: (fill[r], r))
            rows[target].append(index)
            fill[target] += lengths[index]
        width = max(fill)
        shape = (len(rows), width)
        input_ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        position_ids = torch.zeros(shape, dtype=torch.long)
        sequence_ids = torch.full(shape, -1, dtype=torch.long)
        branch_ids = torch.full(shape, -1, dtype=torch.long)
        sides = {1: [[] for _ in features], 2: [[] for _ in features]}  # branch -> pair -> [(source, target)]
        for row, members in enumerate(rows):
            start = 0
            for slot, index in enumerate(members):
                pair, prompt, branches = sequences[index]
                n = len(prompt)
                input_ids[row, start:start + n] = torch.tensor(prompt, dtype=torch.long)
                position_ids[row, start:start + n] = torch.arange(n)
                sequence_ids[row, start:start + n] = slot
                branch_ids[row, start:start + n] = 0
                prompt_last = row * width + start + n - 1 if n else None
                cursor = start + n
                for branch, ids in branches:
                    m = len(ids)
                    input_ids[row, cursor:cursor + m] = torch.tensor(ids, dtype=torch.long)
                    position_ids[row, cursor:cursor + m] = torch.arange(n, n + m)
                    sequence_ids[row, cursor:cursor + m] = slot
                    branch_ids[row, cursor:cursor + m] = branch
                    previous = prompt_last
                    for offset, token in enumerate(ids):
                        if previous is not None:  # the first token of a prompt-less sequence is not predicted
                            sides[branch][pair].append((previous, token))
                        previous = row * width + cursor + offset
                    cursor += m
                start = cursor
        batch = {"input_ids": input_ids, "position_ids": position_ids, "sequence_ids": sequence_ids,
                 "branch_ids": branch_ids}
        for branch, side in ((1, "chosen"), (2, "rejected")):
            tokens = max(1, max(len(pairs) for pairs in sides[branch]))
            index = torch.zeros((len(features), tokens), dtype=torch.long)
            targets = torch.zeros((len(features), tokens), dtype=torch.long)
            mask = torch.zeros((len(features), tokens), dtype=torch.bool)
            for pair, items in enumerate(sides[branch]):
                if items:
                    index[pair, : len(items)] = torch.tensor([source for source, _ in items])
                    targets[pair, : len(items)] = torch.tensor([target for _, target in items])
                    mask[pair, : len(items)] = True
            batch[f"{side}_index"], batch[f"{side}_targets"], batch[f"{side}_mask"] = index, targets, mask
        return batch


def packed_attention_mask(sequence_ids: torch.Tensor, branch_ids: torch.Tensor, position_ids: torch.Tensor, *,
                          sliding_window: int | None = None) -> torch.Tensor:
    """`[R, 1, L, L]` boolean mask (True = may attend) of a `PackedPairCollator` batch.

    Query q sees key k iff both are in the same sequence, k is in the prompt or in q's own branch, and
    position(k) <= position(q) (and position(q) - position(k) < `sliding_window` if given: the window counts
    positions, as in the two-row path). Padding positions see only themselves, so no softmax row is empty.
    """
    same_sequence = (sequence_ids[:, :, None] == sequence_ids[:, None, :]) & (sequence_ids[:, :, None] >= 0)
    visible_branch = (branch_ids[:, None, :] == 0) | (branch_ids[:, :, None] == branch_ids[:, None, :])
    distance = position_ids[:, :, None] - position_ids[:, None, :]
    allowed = same_sequence & visible_branch & (distance >= 0)
    if sliding_window:
        allowed &= distance < sliding_window
    diagonal = torch.eye(sequence_ids.shape[1], dtype=torch.bool, device=sequence_ids.device)[None]
    allowed |= diagonal & (sequence_ids[:, :, None] < 0)
    return allowed[:, None]


def _model_attention_mask(causal_lm, batch: dict):
    """The mask argument for the decoder: one 4D mask, or {layer type: 4D mask} for models with sliding layers."""
    config = _text_config(causal_lm)
    args = (batch["sequence_ids"], batch["branch_ids"], batch["position_ids"])

    def as_model_mask(allowed):
        if config._attn_implementation == "eager":  # eager adds the mask to the scores
            return torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device).masked_fill_(
                ~allowed, torch.finfo(torch.float32).min)
        return allowed

    full = as_model_mask(packed_attention_mask(*args))
    layer_types = set(getattr(config, "layer_types", None) or [])
    if not SHARED_PROMPT_MODEL_TYPES.get(config.model_type) or not layer_types:
        if "sliding_attention" in layer_types:
            raise ValueError(f"{config.model_type}: sliding-window layers need a per-layer-type mask")
        return full
    masks = {}
    for layer_type in layer_types:
        if layer_type == "full_attention":
            masks[layer_type] = full
        elif layer_type == "sliding_attention":
            masks[layer_type] = as_model_mask(packed_attention_mask(*args, sliding_window=config.sliding_window))
        else:
            raise ValueError(f"{config.model_type}: layer type {layer_type!r} has no packed mask")
    return masks


def packed_pair_token_logps(model, batch: dict, *, return_chosen_hidden: bool = False):
    """Per-token log-probs of a `PackedPairCollator` batch: `(chosen_logps, chosen_mask, rejected_logps,
    rejected_mask)`, each `[B, tokens]` (0 where the mask is False), plus the chosen positions' final hidden
    states `[n_chosen_tokens, H]` if `return_chosen_hidden`.

    One forward of the model (hooks, PEFT adapters and wrappers all apply) with the packed mask and position ids;
    the LM head runs on the predicting positions only (`chunked_head_log_probs`), in the pairs' order.
    """
    causal_lm = unwrap_causal_lm(model)
    decoder = causal_lm.get_decoder()
    lm_head = causal_lm.get_output_embeddings()
    captured = {}

    def keep_hidden_states(_module, _args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = decoder.register_forward_hook(keep_hidden_states)
    try:
        model(input_ids=batch["input_ids"], attention_mask=_model_attention_mask(causal_lm, batch),
              position_ids=batch["position_ids"], use_cache=False,
              logits_to_keep=_no_positions(batch["input_ids"]))
    finally:
        handle.remove()
    hidden = captured["hidden"].reshape(-1, captured["hidden"].shape[-1])
    chosen_mask, rejected_mask = batch["chosen_mask"].bool(), batch["rejected_mask"].bool()
    sources = torch.cat([batch["chosen_index"][chosen_mask], batch["rejected_index"][rejected_mask]])
    targets = torch.cat([batch["chosen_targets"][chosen_mask], batch["rejected_targets"][rejected_mask]])
    config = _text_config(causal_lm)
    logit_scale = getattr(config, "logit_scale", None)
    logps = chunked_head_log_probs(
        lm_head, hidden[sources], targets,
        vocab_size=lm_head.weight.shape[0] if hasattr(lm_head, "weight") else config.vocab_size,
        softcap=getattr(config, "final_logit_softcapping", None),
        logit_scale=1.0 if logit_scale is None else float(logit_scale),
    )
    n_chosen = int(chosen_mask.sum())
    # masked_scatter keeps the result connected to the graph even when a side has no tokens.
    chosen_logps = logps.new_zeros(chosen_mask.shape).masked_scatter(chosen_mask, logps[:n_chosen])
    rejected_logps = logps.new_zeros(rejected_mask.shape).masked_scatter(rejected_mask, logps[n_chosen:])
    result = (chosen_logps, chosen_mask, rejected_logps, rejected_mask)
    if return_chosen_hidden:
        return result + (hidden[batch["chosen_index"][chosen_mask]],)
    return result


def is_packed_batch(batch: dict) -> bool:
    return "sequence_ids" in batch


def pair_token_logps(model, batch: dict):
    """`(chosen_logps, chosen_mask, rejected_logps, rejected_mask)` of either batch layout: `PairCollator`'s two
    padded rows per pair (`completion_token_logps`) or `PackedPairCollator`'s shared-prompt rows."""
    if is_packed_batch(batch):
        return packed_pair_token_logps(model, batch)
    token_logps, mask = completion_token_logps(model, batch["input_ids"], batch["attention_mask"],
                                               batch["completion_mask"])
    return split_chosen_rejected(token_logps, mask)


def pair_collator(model, pad_token_id: int, *, packed: bool = True):
    """The fastest collator `model` can take: `PackedPairCollator` if `packed` and `supports_shared_prompt(model)`,
    else `PairCollator` (two padded rows per pair)."""
    if packed and supports_shared_prompt(model):
        return PackedPairCollator(pad_token_id)
    return PairCollator(pad_token_id)
