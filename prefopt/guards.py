"""Non-finite steps stop the job before the optimizer applies them, so no checkpoint holds NaN/Inf.

`FiniteStepsMixin` goes in front of a `transformers.Trainer` subclass (PreferenceTrainer, the SFT
trainer). Trainer computes the gradient norm of every step just before `optimizer.step()`; the
mixin raises `NonFiniteStepError` there when it is NaN or Inf, naming the global step. The loss
terms are checked earlier, in each trainer's `compute_loss`, before the backward pass.

Under DeepSpeed the engine steps inside the backward pass, so the check comes one moment later: the
updated trainable weights are checked instead, and the job stops before any checkpoint is saved.
"""

from __future__ import annotations

import math

import torch


class NonFiniteStepError(FloatingPointError):
    """A loss term or the gradient became NaN or Inf; the message names the global step."""


def non_finite_parameters(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p.detach()).all()]


class FiniteStepsMixin:
    """Raise before an optimizer step whose gradient norm is not finite (see the module docstring)."""

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        step = self.state.global_step + 1
        if grad_norm is None:  # DeepSpeed: the engine has already stepped
            bad = non_finite_parameters(model)
            if bad:
                raise NonFiniteStepError(
                    f"non-finite step at global step {step}: loss terms finite, gradient norm non-finite "
                    f"(weights {bad[0]} and {len(bad) - 1} more became NaN/Inf under DeepSpeed); "
                    "no checkpoint was saved")
            return grad_norm
        value = float(grad_norm)
        if not math.isfinite(value):
            raise NonFiniteStepError(
                f"non-finite step at global step {step}: loss terms finite, gradient norm non-finite ({value}); "
                "the update was not applied and no checkpoint was saved")
        return grad_norm
