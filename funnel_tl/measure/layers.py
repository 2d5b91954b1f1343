"""Choosing layers: the ``--layers`` parser and the resolution of a layer selection.

Shared by ``head_gains`` and ``measure_gains``; a leaf module (it imports nothing of funnel_tl's
but the error type).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable, Sequence

from funnel_tl.errors import FunnelError


def parse_layers(spec: str | None) -> list[int] | None:
    """Parse ``--layers``: ``"3"``, ``"0,5,7"``, ``"4-8"`` (inclusive), ``"-1"`` (the last),
    ``"-2--1"`` (the last two); None = all.

    >>> parse_layers("0,2-4,-1"), parse_layers("-3--1")
    ([0, 2, 3, 4, -1], [-3, -2, -1])
    """
    if spec is None or not spec.strip():
        return None
    layers: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        span = re.fullmatch(r"(-?\d+)-(-?\d+)", part)
        if span:
            first, last = int(span.group(1)), int(span.group(2))
            if (first < 0) != (last < 0):  # which layers lie between depends on the model's depth
                raise FunnelError(
                    f"--layers range {part!r} mixes a layer counted from the start with one "
                    "counted from the end: count both from the same end (such as 2-7 or -6--1)"
                )
            if first > last:
                raise FunnelError(f"--layers range {part!r} runs backwards: write {last}-{first}")
            layers.extend(range(first, last + 1))
        elif re.fullmatch(r"-?\d+", part):
            layers.append(int(part))
        else:
            raise FunnelError(f"cannot read --layers {spec!r}: give layer numbers and ranges such as 0,3,5-7 or -1")
    return layers


def check_layer_selection(layers: object) -> tuple[int, ...] | None:
    """A layer, layers (negative ones count from the end) or None for all, as a tuple of ints;
    which exist is known only with the model (``resolve_layers``)."""
    if layers is None:
        return None
    if isinstance(layers, (str, bytes)) or not isinstance(layers, (numbers.Integral, Iterable)):
        raise FunnelError(
            f"layers must be an integer, a list of integers or None, got {layers!r}"
            + (" (for text such as '0-3,-1' use parse_layers)" if isinstance(layers, str) else "")
        )
    requested = [layers] if isinstance(layers, numbers.Integral) else list(layers)
    if not requested:
        raise FunnelError("no layers asked for: give at least one layer, or None for all")
    for layer in requested:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise FunnelError(f"layer {layer!r} is not an integer")
    return tuple(int(layer) for layer in requested)


def resolve_layers(layers: int | Sequence[int] | None, n_layers: int) -> tuple[int, ...]:
    """Distinct layer indices of a model of ``n_layers``, ascending; negative ones count from the end as in Python."""
    return layers_in_model(check_layer_selection(layers), n_layers)


def layers_in_model(selection: tuple[int, ...] | None, n_layers: int) -> tuple[int, ...]:
    """A checked selection (``check_layer_selection``, ``MeasureOptions.layers``) as the true
    indices of a model of ``n_layers``: distinct, ascending; a layer past its depth is refused."""
    if selection is None:
        return tuple(range(n_layers))
    for layer in selection:
        if not -n_layers <= layer < n_layers:
            raise FunnelError(f"layer {layer} out of range: the model has {n_layers} layers (0-{n_layers - 1})")
    return tuple(sorted({layer % n_layers for layer in selection}))


def check_measured(layers: Sequence[int], n_layers: int) -> tuple[int, ...]:
    """The layers a result holds, as ints: distinct, ascending and within the model (ValueError otherwise)."""
    layers = tuple(int(layer) for layer in layers)
    if not layers or list(layers) != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= n_layers:
        raise ValueError(f"layers {list(layers)} must be distinct, ascending and within 0-{n_layers - 1}")
    return layers


def format_layers(layers: Sequence[int]) -> str:
    """``format_layers([0, 3]) == "0, 3"``."""
    return ", ".join(str(layer) for layer in layers)


def format_layer_spans(layers: Sequence[int]) -> str:
    """Ascending layers as runs, in ``--layers`` syntax: what a subset result says it holds.

    >>> format_layer_spans([0, 1, 2, 3, 7, 9, 10])
    '0-3,7,9-10'
    """
    spans: list[list[int]] = []
    for layer in layers:
        if spans and layer == spans[-1][1] + 1:
            spans[-1][1] = layer
        else:
            spans.append([layer, layer])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in spans)
