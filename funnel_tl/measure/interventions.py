"""What an intervention is: zero, mean or scale:S, parsed from its name (no torch imported here).

An intervention replaces a sublayer's contribution to the residual stream (``hook_attn_out`` or
``hook_mlp_out``, DESIGN.md §2) by 0 (``zero``), by its mean over every measured token of the
prompt set (``mean``) or by S times itself (``scale:S``). ``funnel_tl.measure.intervene`` applies them in
forward passes; this leaf module only names and checks them, so that the command line can refuse
a bad ``--interventions`` before anything heavy is imported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from funnel_tl.errors import FunnelError

DEFAULT_INTERVENTIONS = ("zero", "mean", "scale:0.5", "scale:2")
# The components whose contribution is changed, by results key, and the hook each one is.
COMPONENT_HOOKS = {"attention": "hook_attn_out", "mlp": "hook_mlp_out"}


@dataclass(frozen=True)
class Intervention:
    """One way to change a contribution: ``kind`` zero, mean or scale (with ``factor``).

    >>> parse_intervention("scale:2.0")
    Intervention(name='scale:2', kind='scale', factor=2.0)
    >>> import torch
    >>> parse_intervention("zero").apply(torch.ones(1, 2, 3)).sum().item()
    0.0
    """

    name: str  # the results key: "zero", "mean", "scale:0.5"
    kind: str
    factor: float = 1.0

    def apply(self, activation, mean=None):
        """The changed contribution ``[row, pos, d_model]`` (``mean``: ``[d_model]``, for ``mean``), a new
        tensor of ``activation``'s shape and dtype, never a view (Falcon adds the attention output
        into the MLP's output in place afterwards). Tensor methods only: this module imports no torch."""
        if self.kind == "zero":
            return activation.new_zeros(activation.shape)
        if self.kind == "mean":
            return mean.to(activation.dtype).expand_as(activation).clone()
        return activation * self.factor


def parse_intervention(spec: str) -> Intervention:
    """``"zero"``, ``"mean"`` or ``"scale:S"`` (S a finite number other than 1) as an ``Intervention``.

    The name is normalized (``scale:2.0`` is ``scale:2``), so results keys are the same however
    the factor was written.

    >>> parse_intervention("mean").name, parse_intervention("scale:.5").name
    ('mean', 'scale:0.5')
    """
    text = str(spec).strip().lower()
    if text in ("zero", "mean"):
        return Intervention(text, text)
    kind, separator, value = text.partition(":")
    if kind == "scale" and separator:
        try:
            factor = float(value)
        except ValueError:
            factor = math.nan
        if not math.isfinite(factor):
            raise FunnelError(f"intervention {spec!r}: the scale must be a finite number, such as scale:0.5")
        if factor == 1:
            raise FunnelError(f"intervention {spec!r} changes nothing: give a scale other than 1")
        return Intervention(f"scale:{factor:g}", "scale", factor)
    raise FunnelError(f"unknown intervention {spec!r}: choose zero, mean or scale:S (such as scale:0.5)")


def parse_interventions(specs: str | Iterable[str]) -> tuple[Intervention, ...]:
    """Interventions from a list of specs or one comma-separated string; none twice, at least one.

    >>> [i.name for i in parse_interventions("zero, scale:2")]
    ['zero', 'scale:2']
    """
    if isinstance(specs, str):
        specs = specs.split(",")
    parsed = [parse_intervention(spec) for spec in specs if str(spec).strip()]
    if not parsed:
        raise FunnelError("no interventions given: choose from zero, mean and scale:S")
    names = [intervention.name for intervention in parsed]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise FunnelError(f"intervention {repeated[0]} is given twice: give each once")
    return tuple(parsed)
