"""Preference objectives on per-token log-probs: SLIME, DPO, SimPO, StaPO, and the anchoring
baselines RPO, CPO, ORPO and IPO.

Each objective is one function registered with `@objective` (prefopt.objectives): its name, label,
citation, and keyword-only hyperparameters whose types, ranges and defaults are in the signature.

Every loss is a pure function of per-token log-probs of *completion* tokens, shape
``[batch, tokens]``, and 0/1 masks of the same shape (chosen and rejected may have different
``tokens``). A masked (padded) position may hold anything, NaN, inf or 1e9 included: it is
replaced by 0 with ``torch.where`` before any arithmetic, so it reaches neither the loss nor the
gradient. Each loss returns ``(loss, metrics)``: a scalar, and a dict of detached scalar tensors
under TRL's metric names (``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
``rewards/accuracies``, ``logps/chosen``, ``logps/rejected``) plus the loss's own terms.

Inputs in a low-precision float type (bf16, fp16) are upcast to float32 before the sums; float32
and float64 inputs keep their type.

    from prefopt.losses import compute_loss
    from prefopt.objectives import get_objective
    loss, metrics = compute_loss("slime", chosen_logps, chosen_mask, rejected_logps, rejected_mask)
    loss, metrics = compute_loss("slime", ..., **get_objective("slime").presets["authors_code"])
    loss, metrics = compute_loss("dpo", ..., ref_chosen_logps=ref_c, ref_rejected_logps=ref_r, beta=0.1)

The formulas, defaults, ablations and conventions are written out in docs/objectives.md.
"""

from __future__ import annotations

import importlib
from typing import Annotated

from prefopt.objectives import Range, UnknownHyperparameterError, get_objective, objective


class _OnFirstUse:
    """A module imported when one of its attributes is first read. The planner imports this file for
    the objectives' signatures (a Snakefile parse, every dry run) and never calls a loss: torch is not
    imported for it. Each attribute is looked up once, then kept."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str):
        value = getattr(importlib.import_module(self._name), attribute)
        setattr(self, attribute, value)
        return value


torch = _OnFirstUse("torch")
F = _OnFirstUse("torch.nn.functional")

__all__ = [
    "SLIME_PRESETS",
    "UnknownHyperparameterError",
    "compute_loss",
    "cpo_loss",
    "dpo_loss",
    "ipo_loss",
    "orpo_loss",
    "pooled_token_mean_logps",
    "rpo_loss",
    "sequence_mean_logps",
    "sequence_sum_logps",
    "simpo_loss",
    "slime_loss",
    "stapo_loss",
]

# softplus(-l_t - delta) is > 0 in exact arithmetic but can underflow to 0 for a large delta; a
# floor keeps p * softplus^(p-1) finite for any p > 0 (for p >= 1 it is finite anyway). Its effect
# on the value is below 1e-12**p, far under float32 resolution of any realistic loss.
_SOFTPLUS_FLOOR = 1e-12


# --------------------------------------------------------------------------------------------
# Input handling


def _as_mask(mask: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must hold only 0 and 1")
    return mask != 0


def _check_pair(token_logps: torch.Tensor, mask: torch.Tensor, name: str) -> torch.Tensor:
    """Validate one `[batch, tokens]` log-prob tensor against its mask; return the mask as bool."""
    if not isinstance(token_logps, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(token_logps).__name__}")
    if not token_logps.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {token_logps.dtype}")
    if token_logps.dim() != 2:
        raise ValueError(f"{name} must have shape [batch, tokens], got {tuple(token_logps.shape)}")
    bool_mask = _as_mask(mask, f"{name}'s mask")
    if bool_mask.shape != token_logps.shape:
        raise ValueError(f"{name} has shape {tuple(token_logps.shape)} but its mask has shape {tuple(bool_mask.shape)}")
    if token_logps.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch")
    return bool_mask.to(token_logps.device)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # bf16/fp16 sums over hundreds of tokens lose digits; float64 callers (tests) keep float64.
    return torch.promote_types(dtype, torch.float32)


def _masked(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-probs with padded positions replaced by 0 *before* any arithmetic (NaN-safe, grad-safe)."""
    token_logps = token_logps.to(_compute_dtype(token_logps.dtype))
    return torch.where(mask, token_logps, torch.zeros((), dtype=token_logps.dtype, device=token_logps.device))


def _token_counts(mask: torch.Tensor, name: str) -> torch.Tensor:
    counts = mask.sum(dim=-1)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        shown = ", ".join(str(i) for i in empty[:10]) + (", ..." if len(empty) > 10 else "")
        raise ValueError(
            f"{name}: row {empty[0]} has no completion tokens (empty rows: {shown}); a pair without a "
            "completion is a data bug (check truncation/max_length and the prompt/completion split)"
        )
    return counts


def sequence_sum_logps(token_logps: torch.Tensor, mask: torch.Tensor, *, name: str = "token_logps") -> torch.Tensor:
    """Sum of log-probs over each row's valid completion tokens: log pi(y|x), shape `[batch]`.

    A row without any valid token raises ValueError naming the row: it is a data bug.
    """
    bool_mask = _check_pair(token_logps, mask, name)
    _token_counts(bool_mask, name)
    return _masked(token_logps, bool_mask).sum(dim=-1)


def sequence_mean_logps(token_logps: torch.Tensor, mask: torch.Tensor, *, name: str = "token_logps") -> torch.Tensor:
    """Mean log-prob over each row's valid completion tokens: l̄(y) (Appendix A), shape `[batch]`.

    A row without any valid token raises ValueError naming the row: it is a data bug.
    """
    bool_mask = _check_pair(token_logps, mask, name)
    counts = _token_counts(bool_mask, name)
    safe = _masked(token_logps, bool_mask)
    return safe.sum(dim=-1) / counts.to(safe.dtype)


def _check_batches(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor) -> None:
    if chosen_logps.shape[0] != rejected_logps.shape[0]:
        raise ValueError(
            f"chosen and rejected batches differ: {chosen_logps.shape[0]} vs {rejected_logps.shape[0]} pairs"
        )


def pooled_token_mean_logps(
    token_logps: torch.Tensor, mask: torch.Tensor, *, name: str = "token_logps"
) -> torch.Tensor:
    """Mean log-prob over *all* valid completion tokens of the batch, pooled: a scalar.

    Its negative is the token-level NLL that TRL's NLL/SFT terms use (`nn.CrossEntropyLoss()` over
    the non-ignored labels, `-per_token_logps[mask].mean()`): a long answer weighs more than a short
    one. A row without any valid token raises ValueError naming the row: it is a data bug.
    """
    bool_mask = _check_pair(token_logps, mask, name)
    _token_counts(bool_mask, name)
    safe = _masked(token_logps, bool_mask)
    return safe.sum() / bool_mask.sum().to(safe.dtype)


def _check_references(
    objective: str,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> None:
    for ref, policy, name in (
        (ref_chosen_logps, chosen_logps, "ref_chosen_logps"),
        (ref_rejected_logps, rejected_logps, "ref_rejected_logps"),
    ):
        if not isinstance(ref, torch.Tensor):
            raise TypeError(f"{objective} needs {name} (the reference model's per-token log-probs), got {ref!r}")
        if isinstance(policy, torch.Tensor) and ref.shape != policy.shape:
            raise ValueError(f"{name} has shape {tuple(ref.shape)}, expected {tuple(policy.shape)}")


def _summed_logratios(
    objective: str,
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log pi(y_w), log pi(y_l), chosen log-ratio, rejected log-ratio), each `[batch]`, sums over the
    completion tokens; the reference log-probs are detached (a constant)."""
    _check_references(objective, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen_sum = sequence_sum_logps(chosen_logps, chosen_mask, name="chosen_logps")
    rejected_sum = sequence_sum_logps(rejected_logps, rejected_mask, name="rejected_logps")
    _check_batches(chosen_logps, rejected_logps)
    ref_chosen_sum = sequence_sum_logps(ref_chosen_logps.detach(), chosen_mask, name="ref_chosen_logps")
    ref_rejected_sum = sequence_sum_logps(ref_rejected_logps.detach(), rejected_mask, name="ref_rejected_logps")
    return chosen_sum, rejected_sum, chosen_sum - ref_chosen_sum, rejected_sum - ref_rejected_sum


# --------------------------------------------------------------------------------------------
# Metrics


def _preference_metrics(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    *,
    chosen_mean: torch.Tensor | None = None,
    rejected_mean: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """TRL's names: batch means of per-pair rewards, margins, accuracies and sequence log-probs, plus
    `logps/*_mean`, the length-normalised l̄ that puts every objective on one axis (the figures' curves).
    `chosen_mean`/`rejected_mean` default to `chosen_logps`/`rejected_logps` (already means)."""
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    chosen_mean = chosen_logps if chosen_mean is None else chosen_mean
    rejected_mean = rejected_logps if rejected_mean is None else rejected_mean
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype).mean(),
        "logps/chosen": chosen_logps.detach().mean(),
        "logps/rejected": rejected_logps.detach().mean(),
        "logps/chosen_mean": chosen_mean.detach().mean(),
        "logps/rejected_mean": rejected_mean.detach().mean(),
    }


# --------------------------------------------------------------------------------------------
# SLIME's named settings, each completed with slime_loss's defaults (`methods.slime.preset`)

SLIME_PRESETS: dict[str, dict] = {
    # Section 4.1 of the paper: the defaults of slime_loss.
    "paper": {},
    # The defaults of `SlimeConfig` in the authors' public code (github.com/fpsigma/trl-slime):
    # center_lambda_chosen=0.8, center_lambda_rejected=0.0005, rejected_penalty_shift=0.5,
    # dist_lambda=1.0, hard_margin=1.5, soft_margin=1.0; its SlimeTrainer hard-codes kappa=2.5
    # (`sigmoid(-2.5 * (dist - soft_margin))`) and p=2.5 (`softplus(inner) ** 2.5`).
    "authors_code": {"lambda_w": 0.8, "lambda_l": 0.0005, "delta": 0.5, "kappa": 2.5, "p": 2.5},
    # The defaults of the authors' launch script, which overrides three SlimeConfig fields:
    # --slime-lambda-chosen 0.1, --slime-lambda-rejected 0.0005, --slime-shift 1.25.
    "authors_script": {"lambda_w": 0.1, "lambda_l": 0.0005, "delta": 1.25, "kappa": 2.5, "p": 2.5},
}


# --------------------------------------------------------------------------------------------
# SLIME (Afanasyev & Iov, 2026), equations 5-10 and Appendix A


@objective("slime", label="SLIME", citation="Afanasyev & Iov, 2026", presets=SLIME_PRESETS)
def slime_loss(
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    lambda_w: Annotated[float, Range(ge=0)] = 0.1,
    lambda_l: Annotated[float, Range(ge=0)] = 0.1,
    lambda_d: Annotated[float, Range(ge=0)] = 1.0,
    delta: float = 1.25,
    hard_margin: Annotated[float, Range(ge=0)] = 1.5,
    soft_margin: Annotated[float, Range(ge=0)] = 1.0,
    kappa: Annotated[float, Range(gt=0)] = 2.5,
    p: Annotated[float, Range(gt=0)] = 2.5,
    use_hard_margin: bool = True,
    use_soft_margin: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SLIME: L = L_w + L_l + L_dist (eq. 5), reference-free.

    - L_w = -lambda_w * mean_batch(l̄_w)                                    (eq. 6, Appendix A)
    - L_l = lambda_l * mean over all valid rejected tokens of the batch, pooled,
            of softplus(-l_t - delta)^p                                       (eq. 7)
    - L_dist = lambda_d * mean_batch(relu(m_h - Δ) * sigmoid(-kappa (Δ - m_s)))  (eqs. 8-10)

    with l̄ the mean log-prob over a sequence's completion tokens and Δ = l̄_w - l̄_l (Appendix A's
    length-normalised margin). `use_hard_margin=False` replaces the relu factor by 1 and
    `use_soft_margin=False` the sigmoid factor by 1 (Table 4's ablations); `lambda_w=0` and
    `lambda_l=0` remove the chosen and rejected terms. Paper defaults (section 4.1).
    """
    chosen_mean = sequence_mean_logps(chosen_logps, chosen_mask, name="chosen_logps")
    rejected_mean = sequence_mean_logps(rejected_logps, rejected_mask, name="rejected_logps")
    _check_batches(chosen_logps, rejected_logps)
    margin = chosen_mean - rejected_mean  # Δ

    # Eq. 6: anchor the chosen sequence's (length-normalised) likelihood.
    chosen_term = -lambda_w * chosen_mean.mean()

    # Eq. 7: E_{t in y_l} pools every valid rejected token of the batch (the authors' code does the
    # same), so long rejected answers weigh more than short ones.
    rejected_bool_mask = _as_mask(rejected_mask, "rejected_logps's mask").to(rejected_logps.device)
    rejected_tokens = _masked(rejected_logps, rejected_bool_mask)
    penalty = F.softplus(-rejected_tokens - delta).clamp_min(_SOFTPLUS_FLOOR).pow(p)
    penalty = torch.where(rejected_bool_mask, penalty, torch.zeros_like(penalty))
    rejected_token_count = rejected_bool_mask.sum()
    rejected_term = lambda_l * penalty.sum() / rejected_token_count.to(penalty.dtype)

    # Eqs. 8-10: hard gate relu(m_h - Δ) (zero loss and zero gradient once Δ >= m_h) times the
    # soft gate sigmoid(-kappa (Δ - m_s)).
    gate = torch.ones_like(margin)
    if use_hard_margin:
        gate = gate * F.relu(hard_margin - margin)
    if use_soft_margin:
        gate = gate * torch.sigmoid(-kappa * (margin - soft_margin))
    distance_term = lambda_d * gate.mean()

    loss = chosen_term + rejected_term + distance_term

    metrics = _preference_metrics(chosen_mean, rejected_mean, chosen_mean, rejected_mean)
    below = (rejected_tokens < -delta) & rejected_bool_mask
    metrics.update(
        {
            "slime/chosen_term": chosen_term.detach(),
            "slime/rejected_term": rejected_term.detach(),
            "slime/distance_term": distance_term.detach(),
            "slime/delta": margin.detach().mean(),
            "slime/frac_past_hard_margin": (margin.detach() >= hard_margin).to(margin.dtype).mean(),
            "slime/frac_rejected_tokens_below_neg_delta": (
                below.sum().to(margin.dtype) / rejected_token_count.to(margin.dtype)
            ),
        }
    )
    return loss, metrics


# --------------------------------------------------------------------------------------------
# DPO (Rafailov et al., 2023), the sigmoid loss with summed log-probs


@objective("dpo", label="DPO", citation="Rafailov et al., 2023")
def dpo_loss(
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: Annotated[float, Range(gt=0)] = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO: -log sigmoid(beta [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))]).

    Sequence log-probs are sums over completion tokens. `ref_*` are the reference model's per-token
    log-probs on the same tokens (same shapes and masks); they are treated as constants. Matches
    TRL's DPOTrainer with `loss_type="sigmoid"`, metrics included (`logps/*` are summed log-probs,
    as TRL logs them).
    """
    chosen_sum, rejected_sum, chosen_logratios, rejected_logratios = _summed_logratios(
        "dpo", chosen_logps, chosen_mask, rejected_logps, rejected_mask, ref_chosen_logps, ref_rejected_logps
    )
    loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()
    # TRL's logps/* are summed for DPO.
    metrics = _preference_metrics(
        beta * chosen_logratios, beta * rejected_logratios, chosen_sum, rejected_sum,
        chosen_mean=sequence_mean_logps(chosen_logps.detach(), chosen_mask, name="chosen_logps"),
        rejected_mean=sequence_mean_logps(rejected_logps.detach(), rejected_mask, name="rejected_logps"),
    )
    return loss, metrics


# --------------------------------------------------------------------------------------------
# SimPO (Meng et al., 2024)


@objective("simpo", label="SimPO", citation="Meng et al., 2024")
def simpo_loss(
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    beta: Annotated[float, Range(gt=0)] = 2.0,
    gamma: Annotated[float, Range(ge=0)] = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SimPO: -log sigmoid(beta l̄_w - beta l̄_l - gamma), reference-free.

    `gamma` is the SimPO paper's target reward margin (in reward units, i.e. after the beta
    scaling), the same quantity as TRL's `CPOConfig.simpo_gamma`; SimPO's own code takes
    `gamma_beta_ratio = gamma / beta` instead. Rewards are beta * l̄, as TRL's CPOTrainer logs them.
    """
    chosen_mean = sequence_mean_logps(chosen_logps, chosen_mask, name="chosen_logps")
    rejected_mean = sequence_mean_logps(rejected_logps, rejected_mask, name="rejected_logps")
    _check_batches(chosen_logps, rejected_logps)
    loss = -F.logsigmoid(beta * (chosen_mean - rejected_mean) - gamma).mean()
    metrics = _preference_metrics(beta * chosen_mean, beta * rejected_mean, chosen_mean, rejected_mean)
    return loss, metrics


# --------------------------------------------------------------------------------------------
# StaPO (two-sided contrastive learning; only the abstract is public)


@objective("stapo", label="StaPO", citation="two-sided contrastive loss, abstract only (docs/objectives.md)")
def stapo_loss(
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    beta: Annotated[float, Range(gt=0)] = 2.0,
    left_margin: float = 0.5,
    right_margin: float = 2.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """StaPO as a two-sided contrastive (TsC) loss on the contrastive logit z = l̄_w - l̄_l:

        L = mean_batch[ -log sigmoid(beta (z - left_margin)) - log sigmoid(beta (right_margin - z)) ]

    The left term is SimPO's one-sided loss (with gamma = beta * left_margin) and drives preference
    learning; the right term is its mirror image, which pushes z back down once it grows past the
    right margin. The loss is convex in z, its gradient is bounded by beta, and its minimum is at
    the midpoint of the two margins. This is our reading of the abstract (docs/objectives.md).
    """
    if right_margin <= left_margin:
        raise ValueError(f"right_margin ({right_margin}) must be greater than left_margin ({left_margin})")
    chosen_mean = sequence_mean_logps(chosen_logps, chosen_mask, name="chosen_logps")
    rejected_mean = sequence_mean_logps(rejected_logps, rejected_mask, name="rejected_logps")
    _check_batches(chosen_logps, rejected_logps)
    logit = chosen_mean - rejected_mean  # z
    left = -F.logsigmoid(beta * (logit - left_margin))
    right = -F.logsigmoid(beta * (right_margin - logit))
    loss = (left + right).mean()

    metrics = _preference_metrics(chosen_mean, rejected_mean, chosen_mean, rejected_mean)
    z = logit.detach()
    metrics.update(
        {
            "stapo/left_term": left.detach().mean(),
            "stapo/right_term": right.detach().mean(),
            "stapo/contrastive_logit": z.mean(),
            "stapo/frac_below_left_margin": (z < left_margin).to(z.dtype).mean(),
            "stapo/frac_above_right_margin": (z > right_margin).to(z.dtype).mean(),
        }
    )
    return loss, metrics


# --------------------------------------------------------------------------------------------
# Anchoring baselines: RPO, CPO and ORPO add an NLL term on the chosen answer to a preference
# loss; IPO anchors to the reference model with a squared (not logistic) loss. Each reproduces
# one TRL 1.16 configuration, formula, normalisation and logged metrics included
# (tests/test_losses_vs_trl.py checks loss, gradient and metrics against the TRL trainers).

# ORPO's log-odds need log(1 - e^l̄), which is -inf at l̄ = 0 (every token certain): TRL's loss is
# then inf and its gradient NaN. We cap l̄ at -1e-6 first (a geometric-mean token probability of
# 1 - 1e-6); below the cap, i.e. in any realistic case, the value is TRL's.
_ORPO_MEAN_LOGP_CEILING = -1e-6


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x < 0, stable on both sides of -log 2 (as TRL's ORPO computes it)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def _summed_metrics(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    chosen_sum: torch.Tensor,
    rejected_sum: torch.Tensor,
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The shared metrics where TRL logs summed `logps/*`, plus the length-normalised `logps/*_mean`."""
    return _preference_metrics(
        chosen_rewards, rejected_rewards, chosen_sum, rejected_sum,
        chosen_mean=sequence_mean_logps(chosen_logps.detach(), chosen_mask, name="chosen_logps"),
        rejected_mean=sequence_mean_logps(rejected_logps.detach(), rejected_mask, name="rejected_logps"),
    )


@objective("rpo", label="RPO", citation="Pang et al., 2024")
def rpo_loss(
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: Annotated[float, Range(gt=0)] = 0.1,
    rpo_alpha: Annotated[float, Range(ge=0)] = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RPO (Pang et al., 2024, "Iterative Reasoning Preference Optimization"): DPO plus an NLL
    term on the chosen answer,

        L = mean_batch[-log sigmoid(beta [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])]
            + rpo_alpha * (-(1/N_w) sum over all valid chosen tokens of the batch of l_t)

    with summed sequence log-probs in the DPO term (as `dpo_loss`) and N_w the number of chosen
    completion tokens in the batch: the NLL is pooled over the batch's chosen tokens, as TRL
    computes it (`-chosen_per_token_logps[chosen_mask].mean()`). The paper instead normalises each
    sequence's NLL by its own length before averaging over pairs. Reproduces TRL 1.16's
    `DPOConfig(loss_type=["sigmoid", "sft"], loss_weights=[1.0, rpo_alpha], beta=beta)`; older TRL
    spelled the weight `DPOConfig.rpo_alpha`. Defaults: the paper's beta = 0.1 and alpha = 1.
    Rewards and `logps/*` are TRL's DPO ones (beta times summed log-ratios; summed log-probs).
    """
    chosen_sum, rejected_sum, chosen_logratios, rejected_logratios = _summed_logratios(
        "rpo", chosen_logps, chosen_mask, rejected_logps, rejected_mask, ref_chosen_logps, ref_rejected_logps
    )
    dpo_term = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()
    nll = -pooled_token_mean_logps(chosen_logps, chosen_mask, name="chosen_logps")
    nll_term = rpo_alpha * nll
    loss = dpo_term + nll_term

    metrics = _summed_metrics(beta * chosen_logratios, beta * rejected_logratios, chosen_sum, rejected_sum,
                              chosen_logps, chosen_mask, rejected_logps, rejected_mask)
    metrics.update({"rpo/dpo_term": dpo_term.detach(), "rpo/nll_term": nll_term.detach(), "rpo/nll_loss": nll.detach()})
    return loss, metrics


@objective("cpo", label="CPO", citation="Xu et al., 2024")
def cpo_loss(
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    beta: Annotated[float, Range(gt=0)] = 0.1,
    cpo_alpha: Annotated[float, Range(ge=0)] = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CPO (Xu et al., 2024, "Contrastive Preference Optimization", eq. 3 plus its NLL term):

        L = mean_batch[-log sigmoid(beta (log pi(y_w) - log pi(y_l)))]
            + cpo_alpha * (-(1/N_w) sum over all valid chosen tokens of the batch of l_t)

    reference-free, with summed sequence log-probs in the preference term and the behaviour-cloning
    NLL pooled over the batch's N_w chosen completion tokens (TRL's `nn.CrossEntropyLoss()` on the
    chosen labels). Reproduces TRL 1.16's `trl.experimental.cpo.CPOConfig(loss_type="sigmoid",
    beta=beta, cpo_alpha=cpo_alpha)` (label_smoothing=0, alpha=0, its defaults). Defaults: beta = 0.1
    and cpo_alpha = 1.0 (TRL's defaults; the paper's L_prefer + L_NLL has weight 1). Rewards are
    beta * log pi(y) and `logps/*` summed log-probs, as TRL's CPOTrainer logs them; `cpo/nll_loss`
    is TRL's `nll_loss`.
    """
    chosen_sum = sequence_sum_logps(chosen_logps, chosen_mask, name="chosen_logps")
    rejected_sum = sequence_sum_logps(rejected_logps, rejected_mask, name="rejected_logps")
    _check_batches(chosen_logps, rejected_logps)
    preference_term = -F.logsigmoid(beta * (chosen_sum - rejected_sum)).mean()
    nll = -pooled_token_mean_logps(chosen_logps, chosen_mask, name="chosen_logps")
    nll_term = cpo_alpha * nll
    loss = preference_term + nll_term

    metrics = _summed_metrics(beta * chosen_sum, beta * rejected_sum, chosen_sum, rejected_sum,
                              chosen_logps, chosen_mask, rejected_logps, rejected_mask)
    metrics.update(
        {
            "cpo/preference_term": preference_term.detach(),
            "cpo/nll_term": nll_term.detach(),
            "cpo/nll_loss": nll.detach(),
        }
    )
    return loss, metrics


@objective("orpo", label="ORPO", citation="Hong et al., 2024")
def orpo_loss(
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    beta: Annotated[float, Range(gt=0)] = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ORPO (Hong et al., 2024, "ORPO: Monolithic Preference Optimization without Reference Model",
    eqs. 4, 6 and 7), reference-free:

        L = -(1/N_w) sum over all valid chosen tokens of the batch of l_t
            + beta * mean_batch[-log sigmoid(log odds(y_w) - log odds(y_l))],
        log odds(y) = l̄(y) - log(1 - exp(l̄(y)))

    with l̄ the mean log-prob over a sequence's completion tokens (the odds of the geometric-mean
    token probability) and `beta` the paper's lambda (TRL's name). This is TRL 1.16's
    `trl.experimental.orpo.ORPOConfig(beta=beta)`, with one difference: TRL's NLL counts the chosen
    **prompt and completion** tokens ("orpo chosen nll loss is computed over the full prompt and
    response"), ours the chosen completion tokens only (pooled over the batch, as TRL pools), which
    is the ORPO authors' code with `--disable_prompt_loss`; an objective here sees completion
    tokens only. The odds-ratio term is TRL's exactly; l̄ is capped at -1e-6 before log(1 - e^l̄)
    (finite where TRL's is inf/NaN). Default: TRL's beta = 0.1. Rewards are beta * l̄ and `logps/*`
    the mean log-probs l̄, as TRL's ORPOTrainer logs them; `orpo/log_odds_ratio` (mean log sigmoid of
    the log-odds) and `orpo/log_odds` (their mean; TRL calls it `log_odds_chosen`) are TRL's too.
    """
    chosen_mean = sequence_mean_logps(chosen_logps, chosen_mask, name="chosen_logps")
    rejected_mean = sequence_mean_logps(rejected_logps, rejected_mask, name="rejected_logps")
    _check_batches(chosen_logps, rejected_logps)
    capped_chosen = chosen_mean.clamp(max=_ORPO_MEAN_LOGP_CEILING)
    capped_rejected = rejected_mean.clamp(max=_ORPO_MEAN_LOGP_CEILING)
    log_odds = (capped_chosen - capped_rejected) - (_log1mexp(capped_chosen) - _log1mexp(capped_rejected))
    log_odds_ratio = F.logsigmoid(log_odds)
    odds_ratio_term = -beta * log_odds_ratio.mean()
    nll = -pooled_token_mean_logps(chosen_logps, chosen_mask, name="chosen_logps")
    loss = nll + odds_ratio_term

    metrics = _preference_metrics(beta * chosen_mean, beta * rejected_mean, chosen_mean, rejected_mean)
    metrics.update(
        {
            "orpo/nll_term": nll.detach(),
            "orpo/odds_ratio_term": odds_ratio_term.detach(),
            "orpo/log_odds_ratio": log_odds_ratio.detach().mean(),
            "orpo/log_odds": log_odds.detach().mean(),
        }
    )
    return loss, metrics


@objective("ipo", label="IPO", citation="Azar et al., 2023")
def ipo_loss(
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: Annotated[float, Range(gt=0)] = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IPO (Azar et al., 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", eq. 17) with TRL's length normalisation:

        h = (log pi(y_w) - log pi_ref(y_w)) / |y_w| - (log pi(y_l) - log pi_ref(y_l)) / |y_l|
        L = mean_batch[(h - 1 / (2 beta))^2]

    i.e. the log-ratios averaged over each sequence's completion tokens (TRL: "we confirmed this
    choice with the IPO authors"), and `beta` the paper's tau (TRL's name). Reproduces TRL 1.16's
    `DPOConfig(loss_type=["ipo"], beta=beta)`. Default: TRL's beta = 0.1. Rewards and `logps/*` are
    TRL's (beta times the *summed* log-ratios; summed log-probs), as TRL logs them for every DPO
    loss type; `ipo/delta` is the mean of h.
    """
    chosen_sum, rejected_sum, chosen_logratios, rejected_logratios = _summed_logratios(
        "ipo", chosen_logps, chosen_mask, rejected_logps, rejected_mask, ref_chosen_logps, ref_rejected_logps
    )
    # |y|: the masks were checked (and every row found non-empty) by _summed_logratios.
    chosen_count = _as_mask(chosen_mask, "chosen_logps's mask").sum(dim=-1).to(chosen_sum.device, chosen_sum.dtype)
    rejected_count = _as_mask(rejected_mask, "rejected_logps's mask").sum(dim=-1)
    rejected_count = rejected_count.to(rejected_sum.device, rejected_sum.dtype)
    delta = chosen_logratios / chosen_count - rejected_logratios / rejected_count  # h
    loss = ((delta - 1 / (2 * beta)) ** 2).mean()

    metrics = _summed_metrics(beta * chosen_logratios, beta * rejected_logratios, chosen_sum, rejected_sum,
                              chosen_logps, chosen_mask, rejected_logps, rejected_mask)
    metrics["ipo/delta"] = delta.detach().mean()
    return loss, metrics


# --------------------------------------------------------------------------------------------
# Dispatch through the registry (prefopt.objectives)


def compute_loss(
    name: str,
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The registered objective `name` with hyperparameters `kwargs` (unset ones take its signature's defaults).

    An unknown keyword raises UnknownHyperparameterError naming it (with a near miss); a reference-based
    objective without `ref_*`, or a reference-free one given `ref_*`, raises ValueError.
    """
    spec = get_objective(name)  # its function checks `kwargs` against the signature
    references = {"ref_chosen_logps": ref_chosen_logps, "ref_rejected_logps": ref_rejected_logps}
    if spec.needs_reference:
        missing = [key for key, value in references.items() if value is None]
        if missing:
            raise ValueError(f"loss {name!r} needs the reference model's log-probs: {', '.join(missing)} missing")
        kwargs.update(references)
    else:
        given = [key for key, value in references.items() if value is not None]
        if given:
            raise ValueError(f"loss {name!r} is reference-free but got {', '.join(given)}")
    return spec.fn(chosen_logps, chosen_mask, rejected_logps, rejected_mask, **kwargs)
