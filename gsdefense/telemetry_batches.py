"""Gradient telemetry as Hong et al.'s analysis measured it: over each epoch's actual training batches.

For every training batch B, at the parameters *before* that batch's update, the original
(``analyze_collision.py``, ``analyze_ipoisoning.py``) computed the gradient of the mean loss over the batch's
clean samples C_B and, separately, over its poison samples P_B — for the kernel of the last layer only. In DP
runs those were clipped per example (on the whole-model per-sample norm), noised and summed, then divided by
the subset size. It averaged the vectors over the epoch and reported their L2 norms and cosine.

For a final layer ``z = W a + b`` under cross-entropy the per-sample kernel gradient is
``g_i = (softmax(z_i) − e_{y_i}) a_iᵀ``, with ``‖g_i‖ = ‖δ_i‖·‖a_i‖`` for ``δ = softmax(z) − onehot(y)``:

    raw_S(B)    = δ_Sᵀ a_S / |S_B|                                   (the batch's subset-mean gradient)
    shaped_S(B) = (δ_Sᵀ diag(c_S) a_S + σ·C·ξ) / |S_B|,   c_i = min(1, C / (ν_i + 1e-6))
    ḡ_S         = mean over the epoch's batches with |S_B| > 0        → mean_grad_* and shaped_mean_grad_*

where ν_i is the per-sample norm the update clipped with: the whole-model norm the DP engine computed
(``norms`` passed per step, as the original clipped), else the last layer's ``‖g_i‖``. ξ ~ N(0, I) comes
from the telemetry generator (its own stream: measuring never changes training).

These subset means sum the batch's gradients, so near convergence, where the whole batch's gradient
n_C·ḡ_C + n_P·ḡ_P ≈ 0, ``mean_grad_ratio`` → n_C / n_P and ``mean_grad_cosine`` → −1 whatever the poisons
are (10,800 / 4,320 = 2.5 at 40 % label flips). The per-sample columns carry the poisons' own signal:

    sample_norm_ratio          = mean_P ‖g_i‖ / mean_C ‖g_i‖                  (last layer, raw)
    clipped_sample_norm_ratio  = mean_P min(ν_i, C) / mean_C min(ν_i, C)      (DP only: what the update saw)
    poison_sample_cosine       = mean_{i∈P} cos(g_i, raw_C(B_i))              (last layer, raw; B_i: i's batch)
    clean_sample_cosine        = mean_{i∈C} cos(g_i, raw_C(B_i))              (i's own gradient is in the mean)

each mean over every (sample, batch) occurrence of the epoch; a batch without clean samples adds no cosine.
The layer's inputs and outputs come from a forward hook on the training forward itself, so the measurement
costs no extra forward pass, and all M members of a fused group are measured at once (they see the same
batches; each member's separate run would draw the same ξ, scaled by its σ·C). Everything accumulates on the
device; the numbers reach the host once per epoch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def last_linear(model: nn.Module) -> nn.Module:
    """The model's final Linear layer (for a stacked model: its stacked twin)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear) or type(m).__name__ == "StackedLinear"]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Linear layer to analyse")
    return layers[-1]


class BatchTelemetry:
    """Accumulates Hong's per-batch clean/poison last-layer gradients over an epoch, for M members."""

    def __init__(
        self,
        *,
        y: torch.Tensor,
        is_poison: torch.Tensor,
        clips: list[float | None],
        noises: list[float | None],
        generator: torch.Generator,
    ) -> None:
        self.y, self.is_poison = y, is_poison
        self.members = len(clips)
        device = y.device
        self.private = any(c is not None for c in clips)
        self.clip = torch.tensor([c if c is not None else float("inf") for c in clips], device=device)
        self.noise_std = torch.tensor([(c or 0.0) * (s or 0.0) for c, s in zip(clips, noises)], device=device)
        self.any_noise = any((c or 0.0) * (s or 0.0) > 0 for c, s in zip(clips, noises))
        self.generator = generator
        self.captured: tuple[torch.Tensor, torch.Tensor] | None = None
        self.armed = False
        self._handle = None
        self.reset()

    # -- capture -------------------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Capture the last layer's input and output of the next training forward (see ``arm``)."""
        last = last_linear(model)
        self.kernel_shape = tuple(last.weight.shape[-2:])  # (classes, features), for every member
        self._handle = last.register_forward_hook(self._hook)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if self.armed and self.captured is None:
            self.captured = (inputs[0].detach(), output.detach())

    def arm(self) -> None:
        self.armed, self.captured = True, None

    def record_captured(
        self, idx: torch.Tensor, weight: torch.Tensor | None = None, norms: torch.Tensor | None = None
    ) -> None:
        """Book the forward captured since ``arm`` for the batch ``idx`` (pre-update parameters); ``norms``: the
        whole-model per-sample norms the DP update clipped with ((B,) or (M, B)), if the engine exposes them."""
        self.armed = False
        if self.captured is not None:
            self.record(*self.captured, idx, weight, norms)
        elif self.any_noise:  # a step without a forward (an empty batch) still draws its ξ: streams stay aligned
            torch.randn((2, *self.kernel_shape), generator=self.generator, device=self.y.device)
        self.captured = None

    # -- accumulation --------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def _add(self, key: str, value: torch.Tensor) -> None:
        if key in self.sums:
            self.sums[key].add_(value)
        else:
            self.sums[key] = value.clone()

    @torch.no_grad()
    def record(
        self,
        a: torch.Tensor,
        z: torch.Tensor,
        idx: torch.Tensor,
        weight: torch.Tensor | None = None,
        norms: torch.Tensor | None = None,
    ) -> None:
        """One batch: ``a`` (M·B, H) inputs and ``z`` (M·B, C) outputs of the last layer, members stacked.

        ``weight`` (B,) is 0 for the padding of a fixed-shape batch, which then counts nowhere; ``norms`` the
        per-sample norms the update clipped with (see the module docstring). Both subsets (clean, poison) are
        one axis of every product: a handful of kernels per step, none per subset.
        """
        m = self.members
        a = a.reshape(m, -1, a.shape[-1]).float()
        z = z.reshape(m, -1, z.shape[-1]).float()
        y, poison = self.y[idx], self.is_poison[idx]
        # softmax − onehot; scatter, not F.one_hot, whose range check reads the labels back to the host
        delta = z.softmax(-1).scatter_add(-1, y.expand(m, -1)[..., None], torch.full_like(z[..., :1], -1.0))
        own = delta.norm(dim=-1) * a.norm(dim=-1)  # last layer: ‖g_i‖ = ‖δ_i‖·‖a_i‖, (M, B)
        used = own if norms is None else norms.detach().reshape(m, -1).to(a.dtype)  # what clipping saw
        subsets = torch.stack([~poison, poison], 1).to(a.dtype)  # (B, 2): clean, poison
        if weight is not None:
            subsets = subsets * weight[:, None]
        count = subsets.sum(0)  # (2,)
        # 1/|S_B| folded into the weights; a subset absent from the batch has a zero column and adds nothing
        split = delta[:, :, None, :] * (subsets / count.clamp(min=1.0))[None, :, :, None]  # (M, B, 2, C)
        raw = torch.einsum("mbsc,mbh->msch", split, a)  # (M, 2, C, H) batch means; one batched matmul
        self._add("raw", raw)
        # cos(g_i, raw_C) = δ_iᵀ raw_C a_i / (‖g_i‖·‖raw_C‖); 0 where a batch has no clean sample (masked below)
        dots = torch.einsum("mbc,mch,mbh->mb", delta, raw[:, 0], a)
        cosine = dots / (own * raw[:, 0].flatten(1).norm(dim=1)[:, None]).clamp(min=1e-12)
        with_clean = subsets * (count[0] > 0).to(a.dtype)
        self._add("cosine", cosine @ with_clean)
        self._add("cosine_count", with_clean.sum(0))
        if self.private:
            self._add("clipped_norm", torch.minimum(used, self.clip[:, None]) @ subsets)
            factors = (self.clip[:, None] / (used + 1e-6)).clamp(max=1.0)
            shaped = torch.einsum("mbsc,mbh->msch", split * factors[:, :, None, None], a)
            if self.any_noise:
                xi = torch.randn((2, *shaped.shape[2:]), generator=self.generator, device=a.device)
                scale = (count > 0).to(a.dtype) / count.clamp(min=1.0)  # noise only where the subset is present
                shaped = shaped + (self.noise_std[:, None] * scale)[:, :, None, None] * xi
            self._add("shaped", shaped)
        self._add("batches", (count > 0).to(a.dtype))
        self._add("norm", own @ subsets)
        self._add("count", count)
        self._add("correct", (z.argmax(-1) == y).to(a.dtype) @ subsets)

    def end_epoch(self) -> list[dict[str, float | None]]:
        """Each member's telemetry row for the epoch (the columns of ``telemetry.COLUMNS``); resets."""
        s = self.sums
        if not s:
            return [{} for _ in range(self.members)]
        batches, count = s["batches"].clamp(min=1.0), s["count"].clamp(min=1.0)  # (2,): clean, poison
        has_poison = bool(s["batches"][1] > 0)
        per_sample = s["norm"] / count  # (M, 2): mean per-sample norm, clean and poison
        cosines = s["cosine"] / s["cosine_count"].clamp(min=1.0)
        clipped = s["clipped_norm"] / count if "clipped_norm" in s else None
        out = []
        for k in range(self.members):
            raw_c, raw_p = (s["raw"][k, j].flatten() / batches[j] for j in (0, 1))
            shaped = s["shaped"] if "shaped" in s else s["raw"]  # vanilla: shaping is the identity
            shaped_c, shaped_p = (shaped[k, j].flatten() / batches[j] for j in (0, 1))
            row: dict[str, float | None] = {
                "mean_grad_norm_clean": float(raw_c.norm()),
                "clean_sample_cosine": float(cosines[k, 0]) if s["cosine_count"][0] > 0 else None,
                "clean_train_acc": float(s["correct"][k, 0] / count[0]),
                "shaped_mean_grad_norm_clean": float(shaped_c.norm()),
            }
            if has_poison:
                row["mean_grad_norm_poison"] = float(raw_p.norm())
                row["mean_grad_ratio"] = row["mean_grad_norm_poison"] / max(row["mean_grad_norm_clean"], 1e-12)
                row["mean_grad_cosine"] = float(F.cosine_similarity(raw_c, raw_p, dim=0))
                row["sample_norm_ratio"] = float(per_sample[k, 1] / per_sample[k, 0].clamp(min=1e-12))
                if clipped is not None:
                    row["clipped_sample_norm_ratio"] = float(clipped[k, 1] / clipped[k, 0].clamp(min=1e-12))
                if s["cosine_count"][1] > 0:
                    row["poison_sample_cosine"] = float(cosines[k, 1])
                row["shaped_mean_grad_norm_poison"] = float(shaped_p.norm())
                row["shaped_mean_grad_ratio"] = row["shaped_mean_grad_norm_poison"] / max(
                    row["shaped_mean_grad_norm_clean"], 1e-12
                )
                row["shaped_mean_grad_cosine"] = float(F.cosine_similarity(shaped_c, shaped_p, dim=0))
                row["poison_train_acc"] = float(s["correct"][k, 1] / count[1])
            out.append(row)
        self.reset()
        return out
