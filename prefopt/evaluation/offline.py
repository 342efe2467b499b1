"""Held-out preference metrics from the policy's own log-probs (no generation, no judge).

For each pair, l̄_w and l̄_l are the length-normalised mean completion log-probs of the paper's
appendix A, l̄(y) = 1/|y| Σ_t log π(y_t | x, y<t), and Δ = l̄_w − l̄_l (appendix A, the distance
the margin terms of eqs. (8)-(9) act on). The summary reports:

- ``preference_accuracy``: fraction of pairs with l̄_w > l̄_l (ties count as wrong);
- ``margin_mean``: mean Δ; ``chosen_logp_mean`` / ``rejected_logp_mean``: mean l̄_w / l̄_l.
  The paper's "unlearning" (section 7) is l̄_w falling below the SFT model's; `prefopt.tables`
  reports it as this run's ``chosen_logp_mean`` minus the SFT run's;
- the rejected-token floor: the ``rejected_floor_quantile`` quantile, the min, and the fraction of
  all rejected-token log-probs below −δ (δ: the threshold of SLIME's stabiliser, eq. (7), by default
  the `delta` default of SLIME's loss signature, prefopt.losses.slime_loss, one value for every run);
- ``chosen_token_entropy_mean``: mean entropy (nats) of the next-token distribution over all
  chosen-completion positions, token-pooled;
- ``ci``: 95% percentile-bootstrap intervals of accuracy, margin and chosen log-prob over pairs.

Tokenization and log-probs are `prefopt.logprobs`' (the trainer's), so the numbers match what the
losses saw in training. The entropy reuses the decoder's hidden states from that same forward pass
and applies the LM head over chosen positions a chunk at a time: no `[B, T, V]` tensor is built.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from prefopt.evaluation.bootstrap import BOOTSTRAP_SEED, FLOOR_QUANTILE, N_RESAMPLES, bootstrap_ci

# fp32 logits elements materialised at once when computing the entropy (~128 MiB).
ENTROPY_CHUNK_ELEMENTS = 2**25


def default_slime_delta() -> float:
    """SLIME's stabiliser threshold δ (paper, eq. (7) and section 4.1; tokens below −δ are the ones it pushes
    up): the default of `delta` in SLIME's loss signature (prefopt.objectives)."""
    from prefopt.objectives import get_objective

    return get_objective("slime").defaults["delta"]


def _head_settings(causal_lm):
    config = causal_lm.config.get_text_config() if hasattr(causal_lm.config, "get_text_config") else causal_lm.config
    logit_scale = getattr(config, "logit_scale", None)
    return getattr(config, "final_logit_softcapping", None), 1.0 if logit_scale is None else float(logit_scale)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) over the last axis, computed in fp32."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def chunked_entropy(hidden_states: torch.Tensor, lm_head, *, softcap=None, logit_scale: float = 1.0,
                    chunk_elements: int = ENTROPY_CHUNK_ELEMENTS) -> torch.Tensor:
    """Entropy of the next-token distribution for `[N, H]` hidden states, `rows` positions at a time.

    Applies the same logit scale / soft-capping as `prefopt.logprobs`; only one chunk of
    `[rows, vocab]` fp32 logits exists at any time.
    """
    vocab_size = lm_head.weight.shape[0]
    rows = max(1, chunk_elements // vocab_size)
    pieces = []
    for start in range(0, hidden_states.shape[0], rows):
        logits = lm_head(hidden_states[start:start + rows])
        if logit_scale != 1.0:
            logits = logits * logit_scale
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        pieces.append(entropy_from_logits(logits))
        del logits
    if not pieces:
        return hidden_states.new_zeros((0,), dtype=torch.float32)
    return torch.cat(pieces)


def _pair_logps_and_chosen_entropy(model, batch: dict, *, entropy: bool = True):
    """(chosen_logps, chosen_mask, rejected_logps, rejected_mask, chosen_entropy), each `[B, tokens]`; the
    entropy is that of the next-token distribution at each chosen completion token, 0 elsewhere (and
    everywhere when `entropy` is False: no extra LM-head pass)."""
    from prefopt.logprobs import is_packed_batch, pair_token_logps, packed_pair_token_logps, unwrap_causal_lm

    causal_lm = unwrap_causal_lm(model)
    if not entropy:
        chosen_logps, chosen_mask, rejected_logps, rejected_mask = pair_token_logps(model, batch)
        zeros = torch.zeros(chosen_mask.shape, dtype=torch.float32, device=chosen_logps.device)
        return chosen_logps, chosen_mask, rejected_logps, rejected_mask, zeros
    if not is_packed_batch(batch):
        token_logps, mask, chosen_entropy = _two_row_logps_and_chosen_entropy(model, batch)
        half = token_logps.shape[0] // 2
        return token_logps[:half], mask[:half], token_logps[half:], mask[half:], chosen_entropy
    chosen_logps, chosen_mask, rejected_logps, rejected_mask, hidden = packed_pair_token_logps(
        model, batch, return_chosen_hidden=True)
    softcap, logit_scale = _head_settings(causal_lm)
    chosen_entropy = torch.zeros(chosen_mask.shape, dtype=torch.float32, device=chosen_logps.device)
    chosen_entropy[chosen_mask] = chunked_entropy(hidden, causal_lm.get_output_embeddings(), softcap=softcap,
                                                  logit_scale=logit_scale)
    return chosen_logps, chosen_mask, rejected_logps, rejected_mask, chosen_entropy


def _two_row_logps_and_chosen_entropy(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(token_logps [2B, T-1], mask [2B, T-1], entropy [B, T-1] on chosen completion positions, 0 elsewhere)."""
    from prefopt.logprobs import completion_token_logps, unwrap_causal_lm

    causal_lm = unwrap_causal_lm(model)
    decoder = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else None
    lm_head = causal_lm.get_output_embeddings()
    captured = {}
    handle = None
    if decoder is not None and lm_head is not None and hasattr(lm_head, "weight"):
        # A second hook on the decoder: the hidden states of the very forward pass that gives the log-probs.
        def keep_hidden_states(_module, _args, output):
            captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

        handle = decoder.register_forward_hook(keep_hidden_states)
    try:
        token_logps, mask = completion_token_logps(
            model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        )
    finally:
        if handle is not None:
            handle.remove()
    half = token_logps.shape[0] // 2
    chosen_mask = mask[:half]
    entropy = torch.zeros(chosen_mask.shape, dtype=torch.float32, device=token_logps.device)
    if "hidden" in captured:
        softcap, logit_scale = _head_settings(causal_lm)
        hidden = captured["hidden"][:half, :-1][chosen_mask]
        entropy[chosen_mask] = chunked_entropy(hidden, lm_head, softcap=softcap, logit_scale=logit_scale)
    else:
        # No separable head: the full logits of the chosen rows, one row at a time.
        for row in range(half):
            logits = model(input_ids=batch["input_ids"][row:row + 1],
                           attention_mask=batch["attention_mask"][row:row + 1], use_cache=False).logits[0, :-1]
            entropy[row] = entropy_from_logits(logits) * chosen_mask[row]
    return token_logps, mask, entropy


def evaluate_offline(
    model,
    tokenizer,
    rows: list[dict],
    *,
    max_length: int,
    max_prompt_length: int,
    batch_size: int = 8,
    rejected_floor_quantile: float = FLOOR_QUANTILE,
    slime_delta: float | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    entropy: bool = True,
) -> tuple[dict, list[dict]]:
    """(summary, per_example) for preference rows (docs/architecture.md schema); see the module docstring.

    `entropy=False` skips the LM-head pass of the chosen-token entropy (its fields are then None).
    `slime_delta`: δ of the rejected-token fraction below −δ (None: `default_slime_delta()`).

    Rows are tokenized like training (`prefopt.logprobs.tokenize_pair`, same truncation), batched
    by length, and scored under `torch.no_grad()` in eval mode. `per_example` follows `rows`' order.
    """
    from prefopt.logprobs import pair_collator, tokenize_pair

    if not rows:
        raise ValueError("evaluate_offline: no rows")
    if not 0.0 <= rejected_floor_quantile <= 1.0:
        raise ValueError(f"evaluate_offline: rejected_floor_quantile must be in [0, 1], got {rejected_floor_quantile}")
    features = []
    for index, row in enumerate(tqdm(rows, desc="tokenizing pairs", unit="pair", disable=len(rows) < 1000)):
        try:
            feature = tokenize_pair(tokenizer, row, max_length=max_length, max_prompt_length=max_prompt_length)
        except (KeyError, IndexError, TypeError) as error:
            raise ValueError(f"evaluate_offline: row {index} (prompt_id={row.get('prompt_id')!r}) is malformed: {error!r}") from error
        if not feature["chosen_ids"] or not feature["rejected_ids"]:
            raise ValueError(f"evaluate_offline: row {index} (prompt_id={row.get('prompt_id')!r}) has an empty completion")
        features.append(feature)

    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = pair_collator(model, pad_token_id)  # shared-prompt packed rows where the model takes them
    order = sorted(range(len(features)), key=lambda i: len(features[i]["prompt_ids"])
                   + max(len(features[i]["chosen_ids"]), len(features[i]["rejected_ids"])), reverse=True)
    device = model.device
    per_example: list[dict | None] = [None] * len(rows)
    rejected_token_logps, chosen_entropies = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tqdm(total=len(rows), desc="offline eval", unit="pair") as progress:
            for start in range(0, len(order), batch_size):
                indices = order[start:start + batch_size]
                batch = {key: value.to(device) for key, value in collate([features[i] for i in indices]).items()}
                chosen_logps, chosen_mask, rejected_logps, rejected_mask, chosen_entropy = (
                    _pair_logps_and_chosen_entropy(model, batch, entropy=entropy))
                chosen_logps, rejected_logps = chosen_logps.float(), rejected_logps.float()
                chosen_counts = chosen_mask.sum(-1)
                rejected_counts = rejected_mask.sum(-1)
                chosen_mean = (chosen_logps * chosen_mask).sum(-1) / chosen_counts
                rejected_mean = (rejected_logps * rejected_mask).sum(-1) / rejected_counts
                entropy_mean = chosen_entropy.sum(-1) / chosen_counts
                for position, index in enumerate(indices):
                    rejected_row = rejected_logps[position][rejected_mask[position]].cpu().numpy()
                    rejected_token_logps.append(rejected_row)
                    chosen_entropies.append(chosen_entropy[position][chosen_mask[position]].cpu().numpy())
                    l_w, l_l = float(chosen_mean[position]), float(rejected_mean[position])
                    per_example[index] = {
                        "prompt_id": rows[index].get("prompt_id"),
                        "chosen_logp_mean": l_w,
                        "rejected_logp_mean": l_l,
                        "margin": l_w - l_l,
                        "correct": bool(l_w > l_l),
                        "chosen_tokens": int(chosen_counts[position]),
                        "rejected_tokens": int(rejected_counts[position]),
                        "chosen_entropy_mean": float(entropy_mean[position]) if entropy else None,
                        "rejected_token_logp_min": float(rejected_row.min()),
                        "rejected_token_logps": rejected_row.tolist(),  # bootstraps the floor over pairs
                    }
                progress.update(len(indices))
    finally:
        model.train(was_training)
    return summarize_offline(per_example, np.concatenate(rejected_token_logps),
                             np.concatenate(chosen_entropies) if entropy else None,
                             rejected_floor_quantile=rejected_floor_quantile, slime_delta=slime_delta,
                             n_resamples=n_resamples, seed=seed), per_example


def summarize_offline(per_example: list[dict], rejected_token_logps: np.ndarray,
                      chosen_token_entropies: np.ndarray | None,
                      *, rejected_floor_quantile: float = FLOOR_QUANTILE, slime_delta: float | None = None,
                      n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
    """The summary dict of `evaluate_offline` from its per-pair records and pooled token arrays."""
    if slime_delta is None:
        slime_delta = default_slime_delta()
    correct = np.array([record["correct"] for record in per_example], dtype=np.float64)
    margins = np.array([record["margin"] for record in per_example])
    chosen = np.array([record["chosen_logp_mean"] for record in per_example])
    rejected = np.array([record["rejected_logp_mean"] for record in per_example])
    summary = {
        "n": len(per_example),
        "preference_accuracy": float(correct.mean()),
        "margin_mean": float(margins.mean()),
        "chosen_logp_mean": float(chosen.mean()),
        "rejected_logp_mean": float(rejected.mean()),
        "rejected_token_logp_floor": float(np.quantile(rejected_token_logps, rejected_floor_quantile)),
        "rejected_floor_quantile": rejected_floor_quantile,
        "rejected_token_logp_min": float(rejected_token_logps.min()),
        "rejected_token_frac_below_neg_delta": float((rejected_token_logps < -slime_delta).mean()),
        "slime_delta": slime_delta,
        "chosen_token_entropy_mean": None if chosen_token_entropies is None else float(chosen_token_entropies.mean()),
        "n_chosen_tokens": int(sum(record["chosen_tokens"] for record in per_example)),
        "n_rejected_tokens": int(rejected_token_logps.size),
    }
    summary["ci"] = {
        name: list(bootstrap_ci(values, n_resamples=n_resamples, seed=seed))
        for name, values in (("preference_accuracy", correct), ("margin_mean", margins), ("chosen_logp_mean", chosen))
    }
    return summary
