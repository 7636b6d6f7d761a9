"""Rank units: the only code that knows what an adapted layer looks like.

A :class:`RankGroup` is one adapted matrix (a PEFT AdaLoRA ``SVDLinear``) with its factors
``P = lora_B`` (d_out x r), ``lambda = lora_E`` (r x 1) and ``Q = lora_A`` (r x d_in). Its
``r`` rank units are the triplets ``(lambda_i, P[:, i], Q[i, :])``. Groups are found by type,
never by substrings of parameter names.

:func:`path_point` runs the model at a point of the IG path: the adapter output is scaled by
``u`` in value while the gradient reaching the factors is that of ``u = 1`` scaling (the
path gradient ``h(u)`` of :mod:`igulora.scoring`); the gradient flowing back into the layer's
input is the true one at ``u``. :func:`set_coupled_scale` scales value and gradient alike (the
authors' ``coupled`` estimator).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.adalora.layer import SVDLinear
from torch import nn


def model_relative(name: str) -> str:
    """A module name inside a ``PeftModel`` made relative to the base model (``base_model.model.`` removed)."""
    return name.removeprefix("base_model.model.")


@dataclass
class RankGroup:
    """One adapted matrix and its rank units."""

    name: str
    """Module name inside the PEFT model (``base_model.model.<...>``)."""
    module: SVDLinear
    adapter: str

    @property
    def A(self) -> nn.Parameter:
        return self.module.lora_A[self.adapter]

    @property
    def E(self) -> nn.Parameter:
        return self.module.lora_E[self.adapter]

    @property
    def B(self) -> nn.Parameter:
        return self.module.lora_B[self.adapter]

    @property
    def r(self) -> int:
        return self.E.shape[0]

    @property
    def d_in(self) -> int:
        return self.A.shape[1]

    @property
    def d_out(self) -> int:
        return self.B.shape[0]

    def unit_cost(self, budget_unit: str) -> int:
        """Cost of one rank unit: 1 (``ranks``) or ``d_in + d_out + 1`` (``params``)."""
        return 1 if budget_unit == "ranks" else self.d_in + self.d_out + 1

    def factors(self) -> dict[str, nn.Parameter]:
        """``{"A": Q, "E": lambda, "B": P}``."""
        return {"A": self.A, "E": self.E, "B": self.B}

    @property
    def short_name(self) -> str:
        """The module name relative to the base model (the key of rank patterns and reports)."""
        return model_relative(self.name)

    @property
    def rank_pattern_key(self) -> str:
        """The key PEFT's ``rank_pattern`` uses for this matrix (the ``lora_E`` parameter name,
        relative to the inner model)."""
        return f"{self.short_name}.lora_E.{self.adapter}"


def find_rank_groups(model: nn.Module, adapter: str = "default") -> list[RankGroup]:
    """All AdaLoRA matrices of ``model`` for ``adapter``, in module order."""
    groups = []
    for name, module in model.named_modules():
        if isinstance(module, SVDLinear) and adapter in module.lora_E:
            _enable_path_forward(module)
            groups.append(RankGroup(name=name, module=module, adapter=adapter))
    return groups


def default_target_modules(model: nn.Module) -> list[str]:
    """Leaf names of the linear layers inside repeated blocks (attention and MLP).

    A linear counts when its qualified name has a numeric block index (``layers.3.``), so heads
    (classifier, ``lm_head``, pooler) are left out; found by type, not by model family.
    """
    names: list[str] = []
    for name, module in model.named_modules():
        is_linear = isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
        if is_linear and re.search(r"\.\d+\.", f".{name}"):
            leaf = name.rsplit(".", 1)[-1]
            if leaf not in names:
                names.append(leaf)
    if not names:
        raise ValueError(
            "no linear layers inside numbered blocks were found; pass target_modules explicitly"
        )
    return names


# --------------------------------------------------------------------------- path forward
class _GradScale(torch.autograd.Function):
    """Identity in value (no copy), gradient multiplied by ``scale``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


class _ValueScale(torch.autograd.Function):
    """Value multiplied by ``scale``, gradient passed through unchanged."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        return x * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _PathSVDLinear(SVDLinear):
    """``SVDLinear`` whose forward can run at a point of the IG path.

    ``self._igu_path`` is ``None`` (plain PEFT forward), ``("path", u)`` or ``("coupled", c)``.
    With ``("path", u)`` the adapter term ``a`` enters with value ``u * a`` but an unscaled gradient to
    the factors, and its input passes the gradient scaled by ``u`` (so the gradient into ``x`` is the
    true one, ``W0 + u delta_W``). Both are custom autograd functions that save nothing, so a probe
    pass needs no more memory than a training pass.
    """

    _igu_path: tuple[str, float] | None = None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        mode = self._igu_path
        if mode is None or self.disable_adapters or self.merged:
            return super().forward(x, *args, **kwargs)
        kind, value = mode
        if kind == "coupled" and not self.training:
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        for active in self.active_adapters:
            if active not in self.lora_A:
                continue
            lora_A, lora_B, lora_E = self.lora_A[active], self.lora_B[active], self.lora_E[active]
            scale = self.scaling[active] / (self.ranknum[active] + 1e-5)
            xin = self.lora_dropout[active](self._cast_input_dtype(x, lora_A.dtype))
            if kind == "path":
                a = (_GradScale.apply(xin, value) @ (lora_A * lora_E).T @ lora_B.T) * scale
                result = result + _ValueScale.apply(a, value).to(result.dtype)
            else:
                a = (xin @ (lora_A * lora_E).T @ lora_B.T) * scale
                result = result + (value * a).to(result.dtype)
        return result


def _enable_path_forward(module: SVDLinear) -> None:
    if type(module) is SVDLinear:
        module.__class__ = _PathSVDLinear


@contextlib.contextmanager
def _set_path(groups: list[RankGroup], mode: tuple[str, float] | None) -> Iterator[None]:
    previous = [g.module._igu_path for g in groups]
    for g in groups:
        g.module._igu_path = mode
    try:
        yield
    finally:
        for g, prev in zip(groups, previous):
            g.module._igu_path = prev


def path_point(groups: list[RankGroup], u: float) -> contextlib.AbstractContextManager[None]:
    """Run the adapted layers at path point ``u`` (value ``W0 + u delta_W``, factor gradient ``h(u)``)."""
    return _set_path(groups, ("path", float(u)))


def set_coupled_scale(groups: list[RankGroup], c: float | None) -> None:
    """From now on scale the adapter output by ``c`` in value and gradient (the ``coupled``
    estimator), in training mode only: evaluation always sees the full adapter. ``None`` resets."""
    for g in groups:
        g.module._igu_path = None if c is None else ("coupled", float(c))


def adapter_parameters(groups: list[RankGroup]) -> list[nn.Parameter]:
    """All factors in a fixed order: for each group, Q, lambda, P."""
    return [p for g in groups for p in (g.A, g.E, g.B)]
