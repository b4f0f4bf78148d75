"""One place decides how a DP-SGD run computes its update, for every route (``loop``, ``fused``, Opacus):
which per-sample-gradient engine runs, whether the model is valid for DP at all, and the sampling rate q.

* q = 1/⌈n/B⌉ and the expected batch size ⌊q·n⌋ (``poisson_rate``): every engine samples and accounts with it.
* A model is valid for DP when no module mixes samples (BatchNorm and the like) and every module with
  trainable parameters is one the engine can take per-sample gradients of. ``check_dp_model`` runs Opacus'
  own validators (``ModuleValidator``) on *every* module, not only those with trainable parameters: a
  ``BatchNorm1d(affine=False)`` has none, Opacus' ``validate`` skips it, yet it couples the samples of a batch
  and breaks the sensitivity bound the accountant assumes.
"""

from __future__ import annotations

from opacus.validators import ModuleValidator
from opacus.validators.errors import ShouldReplaceModuleError
from torch import nn

from gsdefense.errors import ConfigError
from gsdefense.training.per_sample import bk_unsupported

FAST_MODES = ("auto", "bk", "vmap")
OPACUS_MODES = ("hooks", "functorch")
GRAD_SAMPLE_MODES = (*FAST_MODES, *OPACUS_MODES)


def poisson_rate(n_train: int, batch_size: int) -> tuple[float, int]:
    """q = 1/⌈n/batch_size⌉ (Opacus' DataLoader rate for ⌈n/B⌉ batches) and the expected batch size ⌊q·n⌋."""
    sample_rate = 1.0 / -(-n_train // batch_size)
    return sample_rate, int(n_train * sample_rate)


def steps_per_epoch(sample_rate: float) -> int:
    return round(1 / sample_rate)


def dp_model_problems(model: nn.Module) -> list[str]:
    """Why ``model`` cannot be trained with DP-SGD, one line each (empty when it can).

    Opacus' ``ModuleValidator.validate`` applies its registered validators to modules with trainable
    parameters only; the same validators run here on every module.
    """
    problems = []
    for name, module in model.named_modules():
        validator = ModuleValidator.VALIDATORS.get(type(module))
        problems += [_one_line(name, module, error) for error in (validator(module) if validator else [])]
    return problems


def _one_line(name: str, module: nn.Module, error: Exception) -> str:
    first = str(error).split(". ")[0].strip().rstrip(".")
    kind = "should be replaced" if isinstance(error, ShouldReplaceModuleError) else "is not supported"
    return f"module {name or '(root)'!r} ({type(module).__name__}) {kind}: {first}"


def check_dp_model(model: nn.Module) -> None:
    """Raise ConfigError (one line) unless DP-SGD's per-sample sensitivity bound holds for ``model``."""
    problems = dp_model_problems(model)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(
            "model",
            f"cannot be trained with DP-SGD: {problems[0]}{more}.",
            "use a model without batch statistics (GroupNorm or LayerNorm instead of BatchNorm, as model=resnet18 "
            "does), or dp=none.",
        )


def resolve_engine(mode: str, model: nn.Module) -> str:
    """The engine that runs ``dp.grad_sample_mode=mode`` for ``model`` (validated for DP first).

    ``auto`` → ``bk`` where book-keeping supports every trainable layer, else ``vmap``.
    """
    if mode not in GRAD_SAMPLE_MODES:
        raise ConfigError("dp.grad_sample_mode", f"unknown mode {mode!r}.", f"use one of {GRAD_SAMPLE_MODES}.")
    check_dp_model(model)
    if mode in OPACUS_MODES or mode == "vmap":
        return mode
    reason = bk_unsupported(model)
    if mode == "bk" and reason is not None:
        raise ConfigError("dp.grad_sample_mode", f"bk cannot handle this model: {reason}.", "use vmap or auto.")
    return "bk" if reason is None else "vmap"
