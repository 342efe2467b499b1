"""prefopt.losses: SLIME term by term against plain-Python arithmetic, Appendix A's gradients,
masking, the ablation flags, StaPO's shape, SimPO/DPO by hand, and the registry."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from prefopt.losses import (
    compute_loss,
    dpo_loss,
    sequence_mean_logps,
    sequence_sum_logps,
    simpo_loss,
    slime_loss,
    stapo_loss,
)

from prefopt.objectives import REGISTRY, Objective, get_objective

# The built-in objectives (a test elsewhere may register its own): every parametrized test covers each.
LOSSES = {name: spec for name, spec in REGISTRY.items() if spec.module == "prefopt.losses"}
PRESETS = get_objective("slime").presets
PAD = 123.0  # a padded position's value; never read
TRL_METRICS = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
]
SLIME_METRICS = [
    "slime/chosen_term",
    "slime/rejected_term",
    "slime/distance_term",
    "slime/delta",
    "slime/frac_past_hard_margin",
    "slime/frac_rejected_tokens_below_neg_delta",
]

# Four pairs whose margins Δ = l̄_w - l̄_l fall past m_h (row 0), below m_s (rows 1, 3) and
# between the margins (row 2); uneven lengths, padding in both tensors.
CHOSEN = [
    [-0.2, -0.5, -0.1, PAD],
    [-1.0, -2.0, -0.5, -0.3],
    [-0.05, PAD, PAD, PAD],
    [-3.0, -1.0, PAD, PAD],
]
CHOSEN_MASK = [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]]
REJECTED = [
    [-2.0, -3.5, -0.1, -4.0, -1.0],
    [-1.2, -0.8, PAD, PAD, PAD],
    [-1.3, -1.2, -1.25, PAD, PAD],
    [-5.0, -0.01, -2.5, -0.7, PAD],
]
REJECTED_MASK = [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]


def tensors(dtype=torch.float64, requires_grad=False):
    chosen = torch.tensor(CHOSEN, dtype=dtype, requires_grad=requires_grad)
    rejected = torch.tensor(REJECTED, dtype=dtype, requires_grad=requires_grad)
    return chosen, torch.tensor(CHOSEN_MASK), rejected, torch.tensor(REJECTED_MASK)


# ---------------------------------------------------------------------------------------------
# Plain-Python references


def _valid(rows, masks):
    return [[value for value, keep in zip(row, mask) if keep] for row, mask in zip(rows, masks)]


def _mean(values):
    return sum(values) / len(values)


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _softplus(x):
    return math.log1p(math.exp(x))


def hand_slime(params: dict) -> dict:
    settings = {**PRESETS["paper"], **params}
    chosen_means = [_mean(row) for row in _valid(CHOSEN, CHOSEN_MASK)]
    rejected_means = [_mean(row) for row in _valid(REJECTED, REJECTED_MASK)]
    margins = [w - l for w, l in zip(chosen_means, rejected_means)]
    pooled = [token for row in _valid(REJECTED, REJECTED_MASK) for token in row]

    chosen_term = -settings["lambda_w"] * _mean(chosen_means)
    rejected_term = settings["lambda_l"] * _mean([_softplus(-t - settings["delta"]) ** settings["p"] for t in pooled])
    gates = []
    for margin in margins:
        gate = 1.0
        if settings["use_hard_margin"]:
            gate *= max(0.0, settings["hard_margin"] - margin)
        if settings["use_soft_margin"]:
            gate *= _sigmoid(-settings["kappa"] * (margin - settings["soft_margin"]))
        gates.append(gate)
    distance_term = settings["lambda_d"] * _mean(gates)
    return {
        "loss": chosen_term + rejected_term + distance_term,
        "slime/chosen_term": chosen_term,
        "slime/rejected_term": rejected_term,
        "slime/distance_term": distance_term,
        "slime/delta": _mean(margins),
        "slime/frac_past_hard_margin": _mean([float(m >= settings["hard_margin"]) for m in margins]),
        "slime/frac_rejected_tokens_below_neg_delta": _mean([float(t < -settings["delta"]) for t in pooled]),
        "rewards/chosen": _mean(chosen_means),
        "rewards/rejected": _mean(rejected_means),
        "rewards/margins": _mean(margins),
        "rewards/accuracies": _mean([float(m > 0) for m in margins]),
        "logps/chosen": _mean(chosen_means),
        "logps/rejected": _mean(rejected_means),
    }


SLIME_SETTINGS = [
    pytest.param({}, id="paper"),
    pytest.param(PRESETS["authors_code"], id="authors_code"),
    pytest.param(PRESETS["authors_script"], id="authors_script"),
    pytest.param({"lambda_w": 0.0}, id="no_chosen_term"),
    pytest.param({"lambda_l": 0.0}, id="no_rejected_term"),
    pytest.param({"use_soft_margin": False}, id="no_soft_margin"),
    pytest.param({"use_hard_margin": False}, id="no_hard_margin"),
    pytest.param({"p": 1.0}, id="p1"),
    pytest.param({"p": 1.5}, id="p1.5"),
    pytest.param({"p": 3.0}, id="p3"),
    pytest.param(
        {
            "lambda_w": 0.3,
            "lambda_l": 0.7,
            "lambda_d": 2.0,
            "delta": 0.2,
            "hard_margin": 2.0,
            "soft_margin": 0.3,
            "kappa": 0.7,
        },
        id="other_values",
    ),
]


@pytest.mark.parametrize("params", SLIME_SETTINGS)
def test_slime_terms_match_plain_python(params):
    expected = hand_slime(params)
    loss, metrics = slime_loss(*tensors(), **params)
    assert loss.item() == pytest.approx(expected.pop("loss"), rel=1e-12, abs=1e-12)
    for name, value in expected.items():
        assert metrics[name].item() == pytest.approx(value, rel=1e-12, abs=1e-12), name


def test_slime_example_covers_every_regime():
    # The fixture is only useful if it reaches every branch of the distance term.
    _, metrics = slime_loss(*tensors())
    margins = [
        w - l
        for w, l in zip(
            [_mean(r) for r in _valid(CHOSEN, CHOSEN_MASK)], [_mean(r) for r in _valid(REJECTED, REJECTED_MASK)]
        )
    ]
    assert any(m >= 1.5 for m in margins) and any(1.0 < m < 1.5 for m in margins) and any(m < 1.0 for m in margins)
    assert 0 < metrics["slime/frac_rejected_tokens_below_neg_delta"].item() < 1


# ---------------------------------------------------------------------------------------------
# Appendix A: gradients


def _distance_gradient(margin, *, lambda_d, hard_margin, soft_margin, kappa):
    """dL_d/dΔ = -λ_d (v + κ u v (1 - v)), u = m_h - Δ, v = σ(-κ(Δ - m_s)); 0 once Δ >= m_h."""
    if margin >= hard_margin:
        return 0.0
    u = hard_margin - margin
    v = _sigmoid(-kappa * (margin - soft_margin))
    return -lambda_d * (v + kappa * u * v * (1 - v))


def test_distance_gradient_matches_appendix_a():
    # Pairs built so Δ = -1, 0.3, 1.0 (= m_s), 1.25, 1.499, 1.5 (= m_h exactly), 2.0; the chosen and
    # rejected means are exact in binary so Δ = m_h holds exactly.
    chosen = torch.tensor(
        [
            [-1.0, -2.0, PAD],
            [-0.5, -0.5, -0.5],
            [-0.25, -0.75, PAD],
            [-1.0, PAD, PAD],
            [-0.001, PAD, PAD],
            [-0.25, -0.75, PAD],
            [-0.5, PAD, PAD],
        ],
        dtype=torch.float64,
        requires_grad=True,
    )
    chosen_mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]])
    rejected = torch.tensor(
        [[-0.5, PAD], [-0.8, PAD], [-1.5, PAD], [-2.0, -2.5], [-1.5, PAD], [-1.5, -2.5], [-2.5, PAD]],
        dtype=torch.float64,
        requires_grad=True,
    )
    rejected_mask = torch.tensor([[1, 0], [1, 0], [1, 0], [1, 1], [1, 0], [1, 1], [1, 0]])
    settings = dict(lambda_d=0.7, hard_margin=1.5, soft_margin=1.0, kappa=2.5)
    loss, metrics = slime_loss(chosen, chosen_mask, rejected, rejected_mask, lambda_w=0.0, lambda_l=0.0, **settings)
    loss.backward()

    batch = chosen.shape[0]
    chosen_means = sequence_mean_logps(chosen.detach(), chosen_mask)
    rejected_means = sequence_mean_logps(rejected.detach(), rejected_mask)
    margins = (chosen_means - rejected_means).tolist()
    assert margins[5] == 1.5 and margins[6] == 2.0
    assert metrics["slime/frac_past_hard_margin"].item() == pytest.approx(2 / 7)
    for i, margin in enumerate(margins):
        dl_dmargin = _distance_gradient(margin, **settings)
        # Δ = l̄_w - l̄_l and the loss is a batch mean: dL/dl_t = ±(1/B)(1/|y|) dL_d/dΔ.
        n_chosen, n_rejected = int(chosen_mask[i].sum()), int(rejected_mask[i].sum())
        for t in range(chosen.shape[1]):
            expected = dl_dmargin / (batch * n_chosen) if chosen_mask[i, t] else 0.0
            assert chosen.grad[i, t].item() == pytest.approx(expected, rel=1e-12, abs=1e-15)
        for t in range(rejected.shape[1]):
            expected = -dl_dmargin / (batch * n_rejected) if rejected_mask[i, t] else 0.0
            assert rejected.grad[i, t].item() == pytest.approx(expected, rel=1e-12, abs=1e-15)
        if margin >= settings["hard_margin"]:
            # Not merely small: exactly zero, the hard margin's "victory condition".
            assert torch.all(chosen.grad[i] == 0) and torch.all(rejected.grad[i] == 0)
        else:
            assert dl_dmargin < 0  # Appendix A: the margin is always pushed up below m_h


@pytest.mark.parametrize("p", [1.0, 1.5, 2.5, 3.0])
def test_rejected_gradient_matches_appendix_a(p):
    chosen, chosen_mask, rejected, rejected_mask = tensors(requires_grad=True)
    lambda_l, delta = 0.3, 1.25
    loss, _ = slime_loss(
        chosen, chosen_mask, rejected, rejected_mask, lambda_w=0.0, lambda_d=0.0, lambda_l=lambda_l, delta=delta, p=p
    )
    loss.backward()
    pooled = int(rejected_mask.sum())  # L_l is a mean over every valid rejected token in the batch
    for i in range(rejected.shape[0]):
        for t in range(rejected.shape[1]):
            if rejected_mask[i, t]:
                l_t = REJECTED[i][t]
                expected = -p * lambda_l * _softplus(-l_t - delta) ** (p - 1) * _sigmoid(-l_t - delta) / pooled
            else:
                expected = 0.0
            assert rejected.grad[i, t].item() == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert torch.all(chosen.grad == 0)
    # The gradient always pushes rejected tokens up (a floor, never a suppression).
    assert torch.all(rejected.grad[rejected_mask.bool()] < 0)


def test_chosen_gradient_matches_appendix_a():
    chosen, chosen_mask, rejected, rejected_mask = tensors(requires_grad=True)
    lambda_w = 0.4
    loss, _ = slime_loss(chosen, chosen_mask, rejected, rejected_mask, lambda_w=lambda_w, lambda_l=0.0, lambda_d=0.0)
    loss.backward()
    batch = chosen.shape[0]
    # dL_w/dl̄_w = -λ_w / B, and dl̄_w/dl_t = 1/|y_w| for each valid token.
    lengths = chosen_mask.sum(dim=1, keepdim=True).double()
    expected = torch.where(chosen_mask.bool(), -lambda_w / (batch * lengths), torch.zeros_like(chosen))
    torch.testing.assert_close(chosen.grad, expected, rtol=1e-12, atol=0)
    assert torch.all(rejected.grad == 0)


def test_chosen_gradient_with_respect_to_sequence_mean():
    # With one token per sequence, l̄_w is the token itself: dL_w/dl̄_w = -λ_w / B exactly.
    chosen = torch.tensor([[-1.0], [-2.0], [-0.5]], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([[-1.5], [-1.0], [-3.0]], dtype=torch.float64)
    mask = torch.ones(3, 1)
    loss, _ = slime_loss(chosen, mask, rejected, mask, lambda_w=0.1, lambda_l=0.0, lambda_d=0.0)
    loss.backward()
    torch.testing.assert_close(chosen.grad, torch.full_like(chosen, -0.1 / 3), rtol=1e-15, atol=0)


def test_full_gradient_is_sum_of_term_gradients():
    def gradient(**params):
        chosen, chosen_mask, rejected, rejected_mask = tensors(requires_grad=True)
        loss, _ = slime_loss(chosen, chosen_mask, rejected, rejected_mask, **params)
        loss.backward()
        return chosen.grad, rejected.grad

    full = gradient()
    parts = [
        gradient(lambda_l=0.0, lambda_d=0.0),
        gradient(lambda_w=0.0, lambda_d=0.0),
        gradient(lambda_w=0.0, lambda_l=0.0),
    ]
    torch.testing.assert_close(full[0], sum(part[0] for part in parts), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(full[1], sum(part[1] for part in parts), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("p", [0.5, 1.0, 2.5])
def test_rejected_penalty_gradient_is_finite_when_softplus_underflows(p):
    # A large delta drives softplus(-l_t - delta) below float32's range (to exactly 0); p < 1 would
    # then give inf * 0 = NaN without the floor.
    rejected = torch.tensor([[-0.01, -0.5, -2.0]], requires_grad=True)
    chosen = torch.tensor([[-0.1, -0.2, -0.3]], requires_grad=True)
    mask = torch.ones(1, 3)
    assert F.softplus(-rejected.detach() - 150.0).eq(0).all()
    loss, _ = slime_loss(chosen, mask, rejected, mask, delta=150.0, p=p)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(rejected.grad).all() and torch.isfinite(chosen.grad).all()


# ---------------------------------------------------------------------------------------------
# Masking


def _call(name, chosen, chosen_mask, rejected, rejected_mask, ref_chosen=None, ref_rejected=None):
    if LOSSES[name].needs_reference:
        return compute_loss(name, chosen, chosen_mask, rejected, rejected_mask, ref_chosen_logps=ref_chosen,
                            ref_rejected_logps=ref_rejected)
    return compute_loss(name, chosen, chosen_mask, rejected, rejected_mask)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("garbage", [float("nan"), 1e9, float("inf"), -float("inf"), -1e9])
def test_padded_positions_change_neither_loss_nor_gradient(name, garbage):
    def run(fill):
        chosen, chosen_mask, rejected, rejected_mask = tensors(dtype=torch.float32, requires_grad=False)
        chosen = chosen.masked_fill(chosen_mask == 0, fill).requires_grad_()
        rejected = rejected.masked_fill(rejected_mask == 0, fill).requires_grad_()
        ref_chosen = (torch.tensor(CHOSEN) - 0.3).masked_fill(chosen_mask == 0, fill)
        ref_rejected = (torch.tensor(REJECTED) + 0.2).masked_fill(rejected_mask == 0, fill)
        loss, metrics = _call(name, chosen, chosen_mask, rejected, rejected_mask, ref_chosen, ref_rejected)
        loss.backward()
        return loss, metrics, chosen.grad, rejected.grad, chosen_mask.bool(), rejected_mask.bool()

    clean = run(0.0)
    dirty = run(garbage)
    assert torch.isfinite(dirty[0])
    assert torch.equal(clean[0], dirty[0])
    for key in clean[1]:
        assert torch.equal(clean[1][key], dirty[1][key]), key
    for clean_grad, dirty_grad, mask in ((clean[2], dirty[2], dirty[4]), (clean[3], dirty[3], dirty[5])):
        assert torch.isfinite(dirty_grad).all()
        assert torch.equal(clean_grad, dirty_grad)
        assert torch.all(dirty_grad[~mask] == 0)


def test_masks_may_be_bool_int_or_float():
    chosen, chosen_mask, rejected, rejected_mask = tensors()
    reference, _ = slime_loss(chosen, chosen_mask, rejected, rejected_mask)
    for convert in (torch.Tensor.bool, torch.Tensor.float, torch.Tensor.long):
        loss, _ = slime_loss(chosen, convert(chosen_mask), rejected, convert(rejected_mask))
        assert torch.equal(loss, reference)


def test_mask_must_be_zero_or_one():
    chosen, chosen_mask, rejected, rejected_mask = tensors()
    with pytest.raises(ValueError, match="only 0 and 1"):
        slime_loss(chosen, chosen_mask * 0.5, rejected, rejected_mask)


# ---------------------------------------------------------------------------------------------
# Ablation flags: each changes exactly its own term


ABLATIONS = {
    "lambda_w": ({"lambda_w": 0.0}, "slime/chosen_term"),
    "lambda_l": ({"lambda_l": 0.0}, "slime/rejected_term"),
    "soft": ({"use_soft_margin": False}, "slime/distance_term"),
    "hard": ({"use_hard_margin": False}, "slime/distance_term"),
}


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_each_ablation_changes_only_its_term(ablation):
    params, changed = ABLATIONS[ablation]
    _, full = slime_loss(*tensors())
    loss, ablated = slime_loss(*tensors(), **params)
    for name in full:
        if name == changed:
            assert not torch.equal(full[name], ablated[name]), name
        else:
            assert torch.equal(full[name], ablated[name]), name
    terms = ablated["slime/chosen_term"] + ablated["slime/rejected_term"] + ablated["slime/distance_term"]
    assert loss.item() == pytest.approx(terms.item(), rel=1e-14)
    if ablation.startswith("lambda"):
        assert ablated[changed].item() == 0.0


def test_ablated_distance_terms_have_the_expected_form():
    chosen, chosen_mask, rejected, rejected_mask = tensors()
    margins = sequence_mean_logps(chosen, chosen_mask) - sequence_mean_logps(rejected, rejected_mask)
    _, no_soft = slime_loss(*tensors(), use_soft_margin=False, lambda_d=0.5)
    _, no_hard = slime_loss(*tensors(), use_hard_margin=False, lambda_d=0.5)
    _, neither = slime_loss(*tensors(), use_soft_margin=False, use_hard_margin=False, lambda_d=0.5)
    assert no_soft["slime/distance_term"].item() == pytest.approx(0.5 * torch.relu(1.5 - margins).mean().item())
    expected_no_hard = 0.5 * torch.sigmoid(-2.5 * (margins - 1.0)).mean().item()
    assert no_hard["slime/distance_term"].item() == pytest.approx(expected_no_hard)
    assert neither["slime/distance_term"].item() == pytest.approx(0.5)  # a constant: both gates gone


def test_without_hard_margin_pairs_past_it_still_get_gradient():
    def gradient(**params):
        chosen, chosen_mask, rejected, rejected_mask = tensors(requires_grad=True)
        loss, _ = slime_loss(chosen, chosen_mask, rejected, rejected_mask, lambda_w=0.0, lambda_l=0.0, **params)
        loss.backward()
        return chosen.grad

    assert torch.all(gradient()[0] == 0)  # row 0 has Δ > m_h
    assert torch.all(gradient(use_hard_margin=False)[0][:3] < 0)
    assert torch.all(gradient(use_soft_margin=False)[0] == 0)


# ---------------------------------------------------------------------------------------------
# SimPO, DPO by hand


def test_simpo_by_hand():
    beta, gamma = 2.5, 0.7
    loss, metrics = simpo_loss(*tensors(), beta=beta, gamma=gamma)
    chosen_means = [_mean(row) for row in _valid(CHOSEN, CHOSEN_MASK)]
    rejected_means = [_mean(row) for row in _valid(REJECTED, REJECTED_MASK)]
    expected = _mean([-math.log(_sigmoid(beta * w - beta * l - gamma)) for w, l in zip(chosen_means, rejected_means)])
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert metrics["rewards/chosen"].item() == pytest.approx(beta * _mean(chosen_means), rel=1e-12)
    assert metrics["rewards/margins"].item() == pytest.approx(
        beta * (_mean(chosen_means) - _mean(rejected_means)), rel=1e-12
    )
    assert metrics["logps/rejected"].item() == pytest.approx(_mean(rejected_means), rel=1e-12)
    assert metrics["rewards/accuracies"].item() == pytest.approx(
        _mean([float(w > l) for w, l in zip(chosen_means, rejected_means)])
    )


def test_dpo_by_hand():
    beta = 0.1
    chosen, chosen_mask, rejected, rejected_mask = tensors()
    ref_chosen = chosen * 0.9 - 0.05
    ref_rejected = rejected * 1.1 + 0.02
    loss, metrics = dpo_loss(chosen, chosen_mask, rejected, rejected_mask, ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected, beta=beta)
    chosen_sums = [sum(r) for r in _valid(CHOSEN, CHOSEN_MASK)]
    rejected_sums = [sum(r) for r in _valid(REJECTED, REJECTED_MASK)]
    ref_chosen_sums = [sum(v * 0.9 - 0.05 for v in r) for r in _valid(CHOSEN, CHOSEN_MASK)]
    ref_rejected_sums = [sum(v * 1.1 + 0.02 for v in r) for r in _valid(REJECTED, REJECTED_MASK)]
    chosen_rewards = [beta * (a - b) for a, b in zip(chosen_sums, ref_chosen_sums)]
    rejected_rewards = [beta * (a - b) for a, b in zip(rejected_sums, ref_rejected_sums)]
    expected = _mean([-math.log(_sigmoid(w - l)) for w, l in zip(chosen_rewards, rejected_rewards)])
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert metrics["rewards/chosen"].item() == pytest.approx(_mean(chosen_rewards), rel=1e-12)
    assert metrics["rewards/rejected"].item() == pytest.approx(_mean(rejected_rewards), rel=1e-12)
    assert metrics["logps/chosen"].item() == pytest.approx(_mean(chosen_sums), rel=1e-12)  # sums, as TRL logs
    assert metrics["logps/rejected"].item() == pytest.approx(_mean(rejected_sums), rel=1e-12)


def test_dpo_treats_reference_as_constant():
    chosen, chosen_mask, rejected, rejected_mask = tensors(requires_grad=True)
    ref_chosen = (chosen.detach() - 0.1).requires_grad_()
    ref_rejected = (rejected.detach() + 0.1).requires_grad_()
    loss, _ = dpo_loss(chosen, chosen_mask, rejected, rejected_mask, ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected)
    loss.backward()
    assert ref_chosen.grad is None and ref_rejected.grad is None
    assert chosen.grad.abs().sum() > 0


def test_dpo_reference_shape_must_match():
    chosen, chosen_mask, rejected, rejected_mask = tensors()
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        dpo_loss(chosen, chosen_mask, rejected, rejected_mask, ref_chosen_logps=chosen, ref_rejected_logps=rejected[:, :3])


# ---------------------------------------------------------------------------------------------
# StaPO


def _stapo_at(logit, **params):
    """StaPO loss and dL/dz for one pair whose contrastive logit z = l_w - l_l is `logit`."""
    chosen = torch.tensor([[logit - 1.0]], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([[-1.0]], dtype=torch.float64)
    mask = torch.ones(1, 1)
    loss, metrics = stapo_loss(chosen, mask, rejected, mask, **params)
    loss.backward()
    return loss.item(), chosen.grad.item(), metrics


def test_stapo_is_minimal_between_its_margins():
    params = dict(beta=2.0, left_margin=0.5, right_margin=2.5)
    grid = [i / 100 for i in range(-300, 601)]
    losses = [_stapo_at(z, **params)[0] for z in grid]
    best = grid[losses.index(min(losses))]
    assert params["left_margin"] < best < params["right_margin"]
    assert best == pytest.approx((params["left_margin"] + params["right_margin"]) / 2, abs=0.01)
    # Convex: decreasing up to the minimum, increasing after it.
    minimum = losses.index(min(losses))
    assert all(a > b for a, b in zip(losses[:minimum], losses[1 : minimum + 1]))
    assert all(a < b for a, b in zip(losses[minimum:], losses[minimum + 1 :]))


@pytest.mark.parametrize("logit", [2.6, 3.0, 5.0, 20.0])
def test_stapo_pushes_logit_down_above_right_margin(logit):
    _, dl_dz, metrics = _stapo_at(logit, beta=2.0, left_margin=0.5, right_margin=2.5)
    assert dl_dz > 0  # gradient descent lowers z
    assert metrics["stapo/frac_above_right_margin"].item() == 1.0


@pytest.mark.parametrize("logit", [-20.0, -1.0, 0.0, 0.4])
def test_stapo_pushes_logit_up_below_left_margin(logit):
    _, dl_dz, metrics = _stapo_at(logit, beta=2.0, left_margin=0.5, right_margin=2.5)
    assert dl_dz < 0  # gradient descent raises z
    assert metrics["stapo/frac_below_left_margin"].item() == 1.0


def test_stapo_by_hand_and_its_gradient_is_bounded_by_beta():
    beta, left, right = 1.5, 0.2, 1.8
    for logit in (-4.0, 0.0, 1.0, 2.0, 9.0):
        loss, dl_dz, metrics = _stapo_at(logit, beta=beta, left_margin=left, right_margin=right)
        left_term = -math.log(_sigmoid(beta * (logit - left)))
        right_term = -math.log(_sigmoid(beta * (right - logit)))
        assert loss == pytest.approx(left_term + right_term, rel=1e-12)
        assert metrics["stapo/left_term"].item() == pytest.approx(left_term, rel=1e-12)
        assert metrics["stapo/right_term"].item() == pytest.approx(right_term, rel=1e-12)
        assert metrics["stapo/contrastive_logit"].item() == pytest.approx(logit, abs=1e-12)
        expected_gradient = beta * (_sigmoid(beta * (logit - right)) - _sigmoid(beta * (left - logit)))
        assert dl_dz == pytest.approx(expected_gradient, rel=1e-10, abs=1e-15)
        assert abs(dl_dz) <= beta


def test_stapo_without_right_margin_is_simpo():
    beta, left = 2.0, 0.4
    stapo, _ = stapo_loss(*tensors(), beta=beta, left_margin=left, right_margin=1e4)
    simpo, _ = simpo_loss(*tensors(), beta=beta, gamma=beta * left)
    assert stapo.item() == pytest.approx(simpo.item(), rel=1e-12)


def test_stapo_margins_must_be_ordered():
    with pytest.raises(ValueError, match="right_margin"):
        stapo_loss(*tensors(), left_margin=1.0, right_margin=1.0)


# ---------------------------------------------------------------------------------------------
# Sequence helpers and input checks


def test_sequence_mean_and_sum():
    chosen, chosen_mask, _, _ = tensors()
    means = sequence_mean_logps(chosen, chosen_mask).tolist()
    sums = sequence_sum_logps(chosen, chosen_mask).tolist()
    for row, mean, total in zip(_valid(CHOSEN, CHOSEN_MASK), means, sums):
        assert mean == pytest.approx(_mean(row), rel=1e-14)
        assert total == pytest.approx(sum(row), rel=1e-14)


@pytest.mark.parametrize("helper", [sequence_mean_logps, sequence_sum_logps])
def test_row_without_completion_tokens_is_a_data_bug(helper):
    chosen, chosen_mask, _, _ = tensors()
    chosen_mask = chosen_mask.clone()
    chosen_mask[2] = 0
    with pytest.raises(ValueError, match="row 2"):
        helper(chosen, chosen_mask)
    with pytest.raises(ValueError, match="row 2"):
        slime_loss(chosen, chosen_mask, *tensors()[2:])


def test_shape_errors_name_the_tensor():
    chosen, chosen_mask, rejected, rejected_mask = tensors()
    with pytest.raises(ValueError, match="rejected_logps"):
        slime_loss(chosen, chosen_mask, rejected, rejected_mask[:, :4])
    with pytest.raises(ValueError, match="batches differ"):
        slime_loss(chosen, chosen_mask, rejected[:3], rejected_mask[:3])
    with pytest.raises(ValueError, match="chosen_logps"):
        slime_loss(chosen[0], chosen_mask[0], rejected, rejected_mask)


@pytest.mark.parametrize(
    ("params", "offender"),
    [
        ({"lambda_l": -0.1}, "lambda_l"),
        ({"p": 0.0}, "p"),
        ({"use_hard_margin": 1}, "use_hard_margin"),
        ({"delta": float("nan")}, "delta"),
        ({"kappa": "2.5"}, "kappa"),
    ],
)
def test_bad_hyperparameters_are_named(params, offender):
    with pytest.raises((TypeError, ValueError), match=offender):
        slime_loss(*tensors(), **params)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_low_precision_inputs_are_summed_in_float32(name):
    chosen, chosen_mask, rejected, rejected_mask = tensors(dtype=torch.bfloat16)
    chosen.requires_grad_()
    loss, metrics = _call(
        name,
        chosen,
        chosen_mask,
        rejected,
        rejected_mask,
        rejected.new_zeros(chosen.shape) - 1,
        rejected.new_zeros(rejected.shape) - 1,
    )
    assert loss.dtype == torch.float32 and loss.dim() == 0
    loss.backward()
    assert chosen.grad.dtype == torch.bfloat16 and torch.isfinite(chosen.grad.float()).all()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_metrics_are_detached_scalars_with_trl_names(name):
    chosen, chosen_mask, rejected, rejected_mask = tensors(requires_grad=True)
    loss, metrics = _call(
        name, chosen, chosen_mask, rejected, rejected_mask, chosen.detach() - 0.1, rejected.detach() + 0.1
    )
    assert loss.dim() == 0 and loss.requires_grad
    assert set(TRL_METRICS) <= set(metrics)
    if name == "slime":
        assert set(SLIME_METRICS) <= set(metrics)
    if name == "stapo":
        assert {key for key in metrics if key.startswith("stapo/")}
    for key, value in metrics.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad, key


# ---------------------------------------------------------------------------------------------
# Registry, presets, compute_loss


def test_needs_reference_comes_from_the_signature():
    import inspect

    for name, spec in LOSSES.items():
        assert spec.needs_reference == ("ref_chosen_logps" in inspect.signature(spec.fn).parameters), name
    assert {"dpo", "simpo", "slime", "stapo"} <= set(LOSSES)
    assert not get_objective("slime").needs_reference and get_objective("dpo").needs_reference


def test_objective_is_frozen_and_defaults_match_signatures():
    spec = get_objective("slime")
    assert isinstance(spec, Objective)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.needs_reference = True
    assert spec.defaults == {
        "lambda_w": 0.1,
        "lambda_l": 0.1,
        "lambda_d": 1.0,
        "delta": 1.25,
        "hard_margin": 1.5,
        "soft_margin": 1.0,
        "kappa": 2.5,
        "p": 2.5,
        "use_hard_margin": True,
        "use_soft_margin": True,
    }
    assert get_objective("dpo").defaults == {"beta": 0.1}
    assert get_objective("simpo").defaults == {"beta": 2.0, "gamma": 0.2}
    assert set(get_objective("stapo").defaults) == {"beta", "left_margin", "right_margin"}


def test_unknown_loss_name_is_named_with_the_known_ones():
    with pytest.raises(KeyError) as error:
        get_objective("slimee")
    message = str(error.value)
    assert message == "unknown objective 'slimee'; did you mean 'slime'?"
    with pytest.raises(ValueError, match="slimee"):
        compute_loss("slimee", *tensors())


@pytest.mark.parametrize("name", ["slime", "simpo", "stapo"])
def test_unknown_argument_is_named(name):
    with pytest.raises(TypeError, match="lamda_w") as error:
        compute_loss(name, *tensors(), lamda_w=0.1)
    assert "lamda_w" in str(error.value)
    assert isinstance(error.value, ValueError)


def test_reference_arguments_are_checked():
    chosen, chosen_mask, rejected, rejected_mask = tensors()
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        compute_loss("dpo", chosen, chosen_mask, rejected, rejected_mask, ref_rejected_logps=rejected)
    with pytest.raises(ValueError, match="reference-free"):
        compute_loss("slime", chosen, chosen_mask, rejected, rejected_mask, ref_chosen_logps=chosen,
                     ref_rejected_logps=rejected)


def test_compute_loss_dispatches_with_defaults_and_overrides():
    chosen, chosen_mask, rejected, rejected_mask = tensors()
    direct, _ = slime_loss(chosen, chosen_mask, rejected, rejected_mask, p=1.5)
    via_registry, _ = compute_loss("slime", chosen, chosen_mask, rejected, rejected_mask, p=1.5)
    assert torch.equal(direct, via_registry)
    direct, _ = dpo_loss(chosen, chosen_mask, rejected, rejected_mask, ref_chosen_logps=chosen - 0.1,
                         ref_rejected_logps=rejected)
    via_registry, _ = compute_loss("dpo", chosen, chosen_mask, rejected, rejected_mask, ref_chosen_logps=chosen - 0.1,
                                   ref_rejected_logps=rejected)
    assert torch.equal(direct, via_registry)


def test_presets():
    assert PRESETS["paper"] == get_objective("slime").defaults
    authors = PRESETS["authors_code"]
    # SlimeConfig's defaults in github.com/fpsigma/trl-slime, kappa and p as hard-coded in SlimeTrainer.
    assert authors["lambda_l"] == 0.0005 and authors["delta"] == 0.5
    assert authors["kappa"] == 2.5 and authors["p"] == 2.5 and authors["lambda_w"] == 0.8
    assert {key: value for key, value in authors.items() if key not in {"lambda_w", "lambda_l", "delta"}} == {
        key: value for key, value in PRESETS["paper"].items() if key not in {"lambda_w", "lambda_l", "delta"}
    }
    for name in PRESETS:
        preset = get_objective("slime").resolve({"preset": name})
        assert set(preset) == set(get_objective("slime").defaults)
        compute_loss("slime", *tensors(), **preset)
        preset["p"] = 99.0  # a copy: the registry is untouched
        assert PRESETS[name]["p"] == 2.5
        with pytest.raises(TypeError):
            PRESETS[name]["p"] = 1.0  # read-only
    with pytest.raises(ValueError, match="did you mean 'authors_code'"):
        get_objective("slime").resolve({"preset": "authors-code"})


def test_dpo_also_logs_length_normalised_logps():
    from prefopt.losses import dpo_loss

    chosen = torch.tensor([[-1.0, -3.0, 0.0]])
    rejected = torch.tensor([[-2.0, -2.0, -4.0]])
    chosen_mask = torch.tensor([[1.0, 1.0, 0.0]])
    rejected_mask = torch.ones(1, 3)
    _, metrics = dpo_loss(chosen, chosen_mask, rejected, rejected_mask, ref_chosen_logps=chosen,
                          ref_rejected_logps=rejected)
    assert metrics["logps/chosen"].item() == pytest.approx(-4.0)  # summed, as TRL logs it
    assert metrics["logps/chosen_mean"].item() == pytest.approx(-2.0)
    assert metrics["logps/rejected_mean"].item() == pytest.approx(-8.0 / 3)


# ---------------------------------------------------------------------------------------------
# The anchoring baselines (RPO, CPO, ORPO, IPO) by hand; tests/test_losses_vs_trl.py checks them
# against TRL's trainers.


def _anchoring_inputs(requires_grad=False):
    chosen, chosen_mask, rejected, rejected_mask = tensors(requires_grad=requires_grad)
    ref_chosen = chosen.detach() * 0.9 - 0.05
    ref_rejected = rejected.detach() * 1.1 + 0.02
    return chosen, chosen_mask, rejected, rejected_mask, ref_chosen, ref_rejected


def _hand_logratios():
    chosen_sums = [sum(r) for r in _valid(CHOSEN, CHOSEN_MASK)]
    rejected_sums = [sum(r) for r in _valid(REJECTED, REJECTED_MASK)]
    chosen_ratios = [sum(v - (v * 0.9 - 0.05) for v in r) for r in _valid(CHOSEN, CHOSEN_MASK)]
    rejected_ratios = [sum(v - (v * 1.1 + 0.02) for v in r) for r in _valid(REJECTED, REJECTED_MASK)]
    return chosen_sums, rejected_sums, chosen_ratios, rejected_ratios


def _hand_pooled_nll():
    # TRL's NLL: every valid chosen token of the batch, pooled (not a mean of per-sequence means).
    return -_mean([t for row in _valid(CHOSEN, CHOSEN_MASK) for t in row])


@pytest.mark.parametrize("rpo_alpha", [0.0, 0.7])
def test_rpo_by_hand(rpo_alpha):
    from prefopt.losses import rpo_loss

    beta = 0.2
    chosen, chosen_mask, rejected, rejected_mask, ref_chosen, ref_rejected = _anchoring_inputs()
    loss, metrics = rpo_loss(chosen, chosen_mask, rejected, rejected_mask, ref_chosen_logps=ref_chosen,
                             ref_rejected_logps=ref_rejected, beta=beta, rpo_alpha=rpo_alpha)
    chosen_sums, rejected_sums, chosen_ratios, rejected_ratios = _hand_logratios()
    dpo_term = _mean([-math.log(_sigmoid(beta * (w - l))) for w, l in zip(chosen_ratios, rejected_ratios)])
    assert loss.item() == pytest.approx(dpo_term + rpo_alpha * _hand_pooled_nll(), rel=1e-12)
    assert metrics["rpo/dpo_term"].item() == pytest.approx(dpo_term, rel=1e-12)
    assert metrics["rpo/nll_loss"].item() == pytest.approx(_hand_pooled_nll(), rel=1e-12)
    assert metrics["rpo/nll_term"].item() == pytest.approx(rpo_alpha * _hand_pooled_nll(), abs=1e-12)
    assert metrics["rewards/chosen"].item() == pytest.approx(beta * _mean(chosen_ratios), rel=1e-12)
    assert metrics["logps/chosen"].item() == pytest.approx(_mean(chosen_sums), rel=1e-12)  # sums, as TRL logs
    assert metrics["logps/rejected_mean"].item() == pytest.approx(
        _mean([_mean(r) for r in _valid(REJECTED, REJECTED_MASK)]), rel=1e-12
    )
    dpo, dpo_metrics = dpo_loss(chosen, chosen_mask, rejected, rejected_mask, ref_chosen_logps=ref_chosen,
                                ref_rejected_logps=ref_rejected, beta=beta)
    for name in TRL_METRICS:
        assert torch.equal(metrics[name], dpo_metrics[name]), name
    if rpo_alpha == 0.0:
        assert loss.item() == pytest.approx(dpo.item(), rel=1e-12)


def test_rpo_nll_gradient_is_pooled_over_the_batch_tokens():
    from prefopt.losses import rpo_loss

    def chosen_gradient(fn, **kwargs):
        chosen, chosen_mask, rejected, rejected_mask, ref_chosen, ref_rejected = _anchoring_inputs(requires_grad=True)
        loss, _ = fn(chosen, chosen_mask, rejected, rejected_mask, ref_chosen_logps=ref_chosen,
                     ref_rejected_logps=ref_rejected, **kwargs)
        loss.backward()
        return chosen.grad

    mask = torch.tensor(CHOSEN_MASK).bool()
    nll_gradient = chosen_gradient(rpo_loss, rpo_alpha=0.7) - chosen_gradient(dpo_loss)
    # d(alpha * NLL)/dl_t = -alpha / N_w for every valid chosen token, whatever its sequence's length.
    assert torch.allclose(nll_gradient[mask], torch.full_like(nll_gradient[mask], -0.7 / mask.sum().item()))
    assert torch.all(nll_gradient[~mask] == 0)


@pytest.mark.parametrize("cpo_alpha", [0.0, 0.5])
def test_cpo_by_hand(cpo_alpha):
    from prefopt.losses import cpo_loss

    beta = 0.2
    chosen, chosen_mask, rejected, rejected_mask = tensors()
    loss, metrics = cpo_loss(chosen, chosen_mask, rejected, rejected_mask, beta=beta, cpo_alpha=cpo_alpha)
    chosen_sums, rejected_sums, _, _ = _hand_logratios()
    preference = _mean([-math.log(_sigmoid(beta * (w - l))) for w, l in zip(chosen_sums, rejected_sums)])
    assert loss.item() == pytest.approx(preference + cpo_alpha * _hand_pooled_nll(), rel=1e-12)
    assert metrics["cpo/preference_term"].item() == pytest.approx(preference, rel=1e-12)
    assert metrics["cpo/nll_loss"].item() == pytest.approx(_hand_pooled_nll(), rel=1e-12)
    assert metrics["rewards/chosen"].item() == pytest.approx(beta * _mean(chosen_sums), rel=1e-12)
    assert metrics["rewards/margins"].item() == pytest.approx(beta * _mean(chosen_sums) - beta * _mean(rejected_sums))
    assert metrics["logps/rejected"].item() == pytest.approx(_mean(rejected_sums), rel=1e-12)
    assert metrics["logps/chosen_mean"].item() == pytest.approx(
        _mean([_mean(r) for r in _valid(CHOSEN, CHOSEN_MASK)]), rel=1e-12
    )


def test_orpo_by_hand():
    from prefopt.losses import orpo_loss

    beta = 0.25
    loss, metrics = orpo_loss(*tensors(), beta=beta)
    chosen_means = [_mean(r) for r in _valid(CHOSEN, CHOSEN_MASK)]
    rejected_means = [_mean(r) for r in _valid(REJECTED, REJECTED_MASK)]

    def log_odds(mean):  # log(p / (1 - p)) of the geometric-mean token probability p = e^l̄
        p = math.exp(mean)
        return math.log(p / (1 - p))

    odds = [log_odds(w) - log_odds(l) for w, l in zip(chosen_means, rejected_means)]
    odds_ratio_term = beta * _mean([-math.log(_sigmoid(o)) for o in odds])
    assert loss.item() == pytest.approx(_hand_pooled_nll() + odds_ratio_term, rel=1e-12)
    assert metrics["orpo/nll_term"].item() == pytest.approx(_hand_pooled_nll(), rel=1e-12)
    assert metrics["orpo/odds_ratio_term"].item() == pytest.approx(odds_ratio_term, rel=1e-12)
    assert metrics["orpo/log_odds"].item() == pytest.approx(_mean(odds), rel=1e-12)
    assert metrics["orpo/log_odds_ratio"].item() == pytest.approx(_mean([math.log(_sigmoid(o)) for o in odds]))
    assert metrics["rewards/chosen"].item() == pytest.approx(beta * _mean(chosen_means), rel=1e-12)
    assert metrics["logps/rejected"].item() == pytest.approx(_mean(rejected_means), rel=1e-12)  # means, as TRL


@pytest.mark.parametrize("certain", ["chosen", "rejected"])
def test_orpo_is_finite_when_every_token_is_certain(certain):
    # l̄ = 0 makes log(1 - e^l̄) = -inf: TRL's loss is then inf or its gradient NaN; ours caps l̄ at -1e-6.
    from prefopt.losses import orpo_loss

    chosen = torch.tensor([[-0.5, -1.0], [-0.2, -0.3]], requires_grad=True)
    rejected = torch.tensor([[-2.0, -1.0], [-1.5, -0.7]], requires_grad=True)
    with torch.no_grad():
        (chosen if certain == "chosen" else rejected)[0] = 0.0
    mask = torch.ones(2, 2)
    loss, metrics = orpo_loss(chosen, mask, rejected, mask)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
    assert all(torch.isfinite(value) for value in metrics.values())


def test_ipo_by_hand():
    from prefopt.losses import ipo_loss

    beta = 0.5
    chosen, chosen_mask, rejected, rejected_mask, ref_chosen, ref_rejected = _anchoring_inputs()
    loss, metrics = ipo_loss(chosen, chosen_mask, rejected, rejected_mask, ref_chosen_logps=ref_chosen,
                             ref_rejected_logps=ref_rejected, beta=beta)
    chosen_sums, _, chosen_ratios, rejected_ratios = _hand_logratios()
    chosen_lengths = [len(r) for r in _valid(CHOSEN, CHOSEN_MASK)]
    rejected_lengths = [len(r) for r in _valid(REJECTED, REJECTED_MASK)]
    # TRL's length normalisation: each log-ratio averaged over its own completion tokens.
    h = [w / nw - l / nl for w, nw, l, nl in zip(chosen_ratios, chosen_lengths, rejected_ratios, rejected_lengths)]
    assert loss.item() == pytest.approx(_mean([(x - 1 / (2 * beta)) ** 2 for x in h]), rel=1e-12)
    assert metrics["ipo/delta"].item() == pytest.approx(_mean(h), rel=1e-12)
    # TRL logs the unnormalised DPO rewards and summed log-probs for IPO too.
    assert metrics["rewards/chosen"].item() == pytest.approx(beta * _mean(chosen_ratios), rel=1e-12)
    assert metrics["logps/chosen"].item() == pytest.approx(_mean(chosen_sums), rel=1e-12)


def test_ipo_gradient_vanishes_at_its_target_margin():
    from prefopt.losses import ipo_loss

    beta = 0.25  # target h = 1 / (2 beta) = 2 nats per token
    chosen = torch.tensor([[-1.0, -2.0, -3.0]], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([[-1.5, -0.5]], dtype=torch.float64, requires_grad=True)
    ref_chosen = chosen.detach() - 2.0  # chosen log-ratio 2 per token, rejected 0
    loss, _ = ipo_loss(chosen, torch.ones(1, 3), rejected, torch.ones(1, 2), ref_chosen_logps=ref_chosen,
                       ref_rejected_logps=rejected.detach(), beta=beta)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-24)
    assert torch.all(chosen.grad == 0) and torch.all(rejected.grad == 0)


def test_anchoring_baselines_in_the_registry():
    expected = {
        "rpo": (True, {"beta": 0.1, "rpo_alpha": 1.0}),
        "cpo": (False, {"beta": 0.1, "cpo_alpha": 1.0}),
        "orpo": (False, {"beta": 0.1}),
        "ipo": (True, {"beta": 0.1}),
    }
    for name, (needs_reference, defaults) in expected.items():
        spec = get_objective(name)
        assert spec.needs_reference is needs_reference, name
        assert spec.defaults == defaults, name
        assert spec.module == "prefopt.losses" and spec.citation, name


@pytest.mark.parametrize(
    ("name", "kwargs", "offender"),
    [
        ("rpo", {"rpo_alpha": -0.1}, "rpo_alpha"),
        ("rpo", {"beta": 0.0}, "beta"),
        ("cpo", {"cpo_alpha": -1.0}, "cpo_alpha"),
        ("orpo", {"beta": -0.5}, "beta"),
        ("ipo", {"beta": 0.0}, "beta"),
    ],
)
def test_anchoring_baselines_bad_hyperparameters_are_named(name, kwargs, offender):
    chosen, chosen_mask, rejected, rejected_mask, ref_chosen, ref_rejected = _anchoring_inputs()
    references = {"ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    with pytest.raises(ValueError, match=offender):
        get_objective(name).fn(chosen, chosen_mask, rejected, rejected_mask,
                               **(references if get_objective(name).needs_reference else {}), **kwargs)


@pytest.mark.parametrize("name", ["rpo", "ipo"])
def test_anchoring_baselines_check_the_reference(name):
    chosen, chosen_mask, rejected, rejected_mask, ref_chosen, ref_rejected = _anchoring_inputs(requires_grad=True)
    fn = get_objective(name).fn
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        fn(chosen, chosen_mask, rejected, rejected_mask, ref_chosen_logps=ref_chosen,
           ref_rejected_logps=ref_rejected[:, :3])
    with pytest.raises(TypeError, match=f"{name} needs ref_chosen_logps"):
        fn(chosen, chosen_mask, rejected, rejected_mask, ref_chosen_logps=None, ref_rejected_logps=ref_rejected)
    # The reference is a constant: no gradient reaches it.
    ref_chosen.requires_grad_()
    loss, _ = fn(chosen, chosen_mask, rejected, rejected_mask, ref_chosen_logps=ref_chosen,
                 ref_rejected_logps=ref_rejected)
    loss.backward()
    assert ref_chosen.grad is None and chosen.grad.abs().sum() > 0
