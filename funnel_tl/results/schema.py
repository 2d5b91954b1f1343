"""The files funnel_tl reads back, checked against their schema before anything uses them.

results.json (``GainResult.load``), heads.json (``HeadResult.load``), their ``by_position``
blocks, and compare.json (``Comparison.load``) may have been edited by hand, cut short or written
by something else. Each is checked here, field by field, for what the code reading it relies on:
a missing field, a value of the wrong type, a number that is not finite (JSON's ``NaN``), a list
that is not a rectangular array of numbers. The answer is one ``FunnelError`` line naming the file
and the field (``runs/a/results.json: per_prompt.mlp.out_sum[3][1] is NaN, not a finite
number ...``), never an AttributeError or TypeError later in ``report`` or a sweep's resume.

Keys not listed are let through (files gain keys; DESIGN.md keeps them backward compatible).
Shapes that tie fields together (every sum has one row per prompt) are checked by the result
classes themselves as they are built.

>>> check_results({"schema_version": 1, "model": 7}, "results.json")
Traceback (most recent call last):
funnel_tl.errors.FunnelError: results.json: model must be a string, not a number (7): the file is damaged or was edited; rerun the command that wrote it (funnel-tl run or compare)
"""  # noqa: E501 -- a doctest expects the whole exception message on one line

from __future__ import annotations

import math
import types
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields
from typing import Any, Union, get_args, get_origin, get_type_hints

import numpy as np

from funnel_tl.components import DEFINITIONS
from funnel_tl.errors import FunnelError


class Bad(Exception):
    """A field that does not match its schema: where it is and what is wrong with it."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where} {problem}")


def kind(value: Any) -> str:
    """A JSON value's kind for a message.

    >>> kind(None), kind(True), kind(3), kind("x"), kind([1]), kind({})
    ('null', 'a boolean (true)', 'a number (3)', "a string ('x')", 'a list', 'an object')
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    containers: dict[type, str] = {list: "a list", dict: "an object"}
    return containers.get(type(value), f"a {type(value).__name__}")


# ---- the schema language: each spec is a function check(value, where) that raises Bad ------------
Spec = Callable[[Any, str], None]


def string(choices: Sequence[str] | None = None) -> Spec:
    def check(value, where):
        if not isinstance(value, str):
            raise Bad(where, f"must be a string, not {kind(value)}")
        if choices is not None and value not in choices:
            raise Bad(where, f"must be one of {', '.join(choices)}, not {value!r}")

    return check


def integer(minimum: int | None = None) -> Spec:
    def check(value, where):
        if isinstance(value, bool) or not isinstance(value, int):
            raise Bad(where, f"must be a whole number, not {kind(value)}")
        if minimum is not None and value < minimum:
            raise Bad(where, f"must be {minimum} or more, not {value}")

    return check


def number(low: float | None = None, high: float | None = None) -> Spec:
    """A finite number (an int or a float), strictly between ``low`` and ``high`` when given."""

    def check(value, where):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Bad(where, f"must be a number, not {kind(value)}")
        if not math.isfinite(value):
            raise Bad(where, f"is {_json_word(value)}, not a finite number")
        if (low is not None and value <= low) or (high is not None and value >= high):
            raise Bad(where, f"must lie between {low} and {high}, not {value}")

    return check


def boolean() -> Spec:
    def check(value, where):
        if not isinstance(value, bool):
            raise Bad(where, f"must be true or false, not {kind(value)}")

    return check


def literal(expected: str) -> Spec:
    def check(value, where):
        if value != expected:
            raise Bad(where, f"must be {expected!r}, not {kind(value)}")

    return check


def nullable(spec: Spec) -> Spec:
    def check(value, where):
        if value is not None:
            spec(value, where)

    return check


def either(*specs: Spec, expected: str) -> Spec:
    """The first of ``specs`` that fits; none fitting: ``where must be <expected>``."""

    def check(value, where):
        for spec in specs:
            try:
                spec(value, where)
                return
            except Bad:
                continue
        raise Bad(where, f"must be {expected}, not {kind(value)}")

    return check


def list_of(item: Spec) -> Spec:
    def check(value, where):
        if not isinstance(value, list):
            raise Bad(where, f"must be a list, not {kind(value)}")
        for index, element in enumerate(value):
            item(element, f"{where}[{index}]")

    return check


def obj(required: dict[str, Spec] | None = None, optional: dict[str, Spec] | None = None) -> Spec:
    """An object with the ``required`` fields and, where present, the ``optional`` ones."""
    required, optional = required or {}, optional or {}

    def check(value, where):
        if not isinstance(value, dict):
            raise Bad(where or "the file", f"must be a JSON object, not {kind(value)}")
        for name, spec in required.items():
            if name not in value:
                raise Bad(_join(where, name), "is missing")
            spec(value[name], _join(where, name))
        for name, spec in optional.items():
            if name in value:
                spec(value[name], _join(where, name))

    return check


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def array(ndim: int, integers: bool = False, minimum: float | None = None, nulls: bool = False) -> Spec:
    """A rectangular ``ndim``-deep list of finite numbers (whole ones with ``integers``; JSON null
    allowed as a cell with ``nulls``, as position gains write an empty cell), each ``>= minimum``;
    an empty list passes (no prompts, no layers: the result classes judge the shape)."""
    expected = f"a {ndim}-D list of {'whole numbers' if integers else 'numbers'}"

    def check(value, where):
        if not isinstance(value, list):
            raise Bad(where, f"must be {expected}, not {kind(value)}")
        if not value:
            return
        try:
            values = np.asarray(value)
        except (ValueError, TypeError):  # ragged
            values = None
        fast = values is not None and values.ndim == ndim and values.dtype.kind in ("iu" if integers else "iuf")
        if not fast:
            _walk(value, where, ndim, integers, nulls, expected)  # names the first bad cell
            values = np.asarray(value, dtype=np.float64)  # None (a null cell) -> NaN
        elif values.dtype.kind == "f":
            bad = ~np.isfinite(values)
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                raise Bad(
                    where + "".join(f"[{i}]" for i in index), f"is {_json_word(values[index])}, not a finite number"
                )
        if minimum is not None:
            low = np.where(np.isnan(values), np.inf, values) < minimum
            if low.any():
                index = tuple(int(i) for i in np.argwhere(low)[0])
                raise Bad(where + "".join(f"[{i}]" for i in index), f"is {values[index]:g}, below {minimum:g}")

    return check


def _json_word(value: float) -> str:
    """A non-finite number as JSON text spells it: NaN, Infinity, -Infinity."""
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _walk(value, where: str, depth: int, integers: bool, nulls: bool, expected: str, width: list | None = None):
    """Find the first cell of a nested list that breaks ``array``'s rules, and say where it is."""
    widths = width if width is not None else [None] * depth
    if depth == 0:
        if value is None and nulls:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integers and not isinstance(value, int)):
            raise Bad(
                where, f"must be a {'whole number' if integers else 'number'} (a cell of {expected}), not {kind(value)}"
            )
        if not math.isfinite(value):
            raise Bad(where, f"is {_json_word(value)}, not a finite number")
        return
    level = len(widths) - depth
    if not isinstance(value, list):
        raise Bad(where, f"must be a list (a row of {expected}), not {kind(value)}")
    if widths[level] is None:
        widths[level] = len(value)
    elif len(value) != widths[level]:
        raise Bad(
            where,
            f"has {len(value)} entries where the rows before it have {widths[level]} ({expected} must be rectangular)",
        )
    for index, element in enumerate(value):
        _walk(element, f"{where}[{index}]", depth - 1, integers, nulls, expected, widths)


# ---- the files ------------------------------------------------------------------------------------
COMPONENT_SUMS = {
    component: obj({"out_sum": array(2, minimum=0), "in_sum": array(2, minimum=0)})
    for component in ("attn", "mlp", "block")
}
POSITION_SUMS = {
    component: obj({"out_sum": array(3, minimum=0), "in_sum": array(3, minimum=0)})
    for component in ("attn", "mlp", "block")
}
INTERVALS = obj(
    {
        "confidence": number(0, 1),
        "n_resamples": integer(1),
        "seed": integer(0),
        **{key: array(2) for key in ("attention", "mlp", "combined", "block", "cumulative")},
    },
    {"method": string()},
)  # stats.METHODS' key, or an older file's "percentile bootstrap over prompts"
POSITION_INTERVALS = obj(
    {
        "confidence": number(0, 1),
        "n_resamples": integer(1),
        "seed": integer(0),
        **{key: array(3, nulls=True) for key in ("attention", "mlp", "block", "combined")},
    }
)
PROMPTS = obj({"texts": nullable(list_of(string()))}, {"sha256": nullable(string()), "n_prompts": integer(0)})
MAX_TOKENS = either(integer(1), literal("context"), expected="a number of tokens or 'context'")
# Provenance keys something reads back (the CLI's notes, a sweep's row and resume check).
PROVENANCE = obj(
    optional={
        "dtype": nullable(string()),
        "max_tokens_per_prompt": nullable(MAX_TOKENS),
        "truncation": nullable(
            obj(
                {"max_tokens_per_prompt": integer(1), "n_truncated": integer(0), "tokens_dropped": integer(0)},
                {"truncated_prompts": list_of(integer(0))},
            )
        ),
        "prompts_sha256": nullable(string()),
        "top": integer(1),
        "n_parameters": nullable(integer(0)),
        "peak_memory_bytes": nullable(integer(0)),
        "memory_kind": nullable(string()),
        **{key: nullable(number()) for key in ("seconds", "load_seconds", "measure_seconds")},
        "revision": nullable(string()),
        "step": nullable(integer(0)),
    }
)
POSITIONS = obj(
    {
        "edges": array(1, integers=True, minimum=0),
        "per_prompt": obj({"n_tokens": array(2, integers=True, minimum=0), **POSITION_SUMS}),
    },
    {"sink_positions": integer(1), "intervals": nullable(POSITION_INTERVALS)},
)
HEAD_POSITIONS = obj(
    {
        "edges": array(1, integers=True, minimum=0),
        "per_prompt": obj(
            {
                "n_tokens": array(2, integers=True, minimum=0),
                "head_norm_sum": array(4, minimum=0),
                "in_sum": array(3, minimum=0),
            }
        ),
    }
)

RESULTS = obj(
    {
        "model": string(),
        "definition": string(DEFINITIONS),
        "n_layers": integer(1),
        "hidden_dim": integer(1),
        "parallel_blocks": boolean(),
        "prompts": PROMPTS,
        "per_prompt": obj({"n_tokens": array(1, integers=True, minimum=1), **COMPONENT_SUMS}),
    },
    {
        "layers": nullable(list_of(integer(0))),
        "drop_first": integer(0),
        "provenance": PROVENANCE,
        "intervals": nullable(INTERVALS),
        "by_position": nullable(POSITIONS),
    },
)
HEADS = obj(
    {
        "model": string(),
        "definition": string(DEFINITIONS),
        "n_layers": integer(1),
        "n_heads": integer(1),
        "d_head": integer(1),
        "hidden_dim": integer(1),
        "layers": list_of(integer(0)),
        "prompts": PROMPTS,
        "per_prompt": obj(
            {
                "n_tokens": array(1, integers=True, minimum=1),
                "head_norm_sum": array(3, minimum=0),
                "head_projection_sum": array(3),
                "attn_out_sum": array(2, minimum=0),
                "in_sum": array(2, minimum=0),
            }
        ),
    },
    {
        "n_key_value_heads": nullable(integer(1)),
        "drop_first": integer(0),
        "provenance": PROVENANCE,
        "by_position": nullable(HEAD_POSITIONS),
    },
)
# compare.json's settings; its rows are checked against ComparisonRow's own fields (compare_row).
COMPARE_SETTINGS = {
    "definition": string(DEFINITIONS),
    "n_prompts": integer(1),
    "prompts_sha256": string(),
    "drop_first": integer(0),
    "dtype": string(),
    "device": string(),
    "bootstrap": integer(0),
    "bootstrap_seed": integer(0),
    "batch_size": either(integer(1), literal("auto"), expected="a whole number or 'auto'"),
    "by_position": boolean(),
    "max_tokens_per_prompt": nullable(MAX_TOKENS),
    "world_size": integer(1),
}

HINTS = {
    "results": "rerun the command that wrote it (funnel-tl run or compare)",
    "heads": "rerun `funnel-tl heads`",
    "compare": "rerun the same `funnel-tl compare`, which reads every finished model back and writes it again",
}


def _check(data: Any, spec: Spec, source: str, hint: str) -> dict:
    try:
        spec(data, "")
    except Bad as bad:
        raise FunnelError(f"{source}: {bad}: the file is damaged or was edited; {hint}") from None
    return data


def check_results(data: Any, source: str = "results") -> dict:
    """``data`` (a parsed results.json) if it matches the schema, else a FunnelError naming ``source`` and the field."""
    return _check(data, RESULTS, source, HINTS["results"])


def check_heads(data: Any, source: str = "heads data") -> dict:
    """``data`` (a parsed heads.json) if it matches the schema, else a FunnelError naming ``source`` and the field."""
    return _check(data, HEADS, source, HINTS["heads"])


def check_compare(data: Any, row_type: type, schema_version: int, source: str = "compare.json") -> dict:
    """``data`` (a parsed compare.json) if it is a compare file whose rows and settings match the
    schema (rows: every field of ``row_type``, the sweep's ``ComparisonRow``; passed in, since the
    sweep imports this module); another kind of file, or another schema version, is returned for
    the caller to refuse."""
    if not isinstance(data, dict):
        raise FunnelError(f"{source} holds {kind(data)}, not a funnel_tl compare file: rerun `funnel-tl compare`")
    if data.get("kind") != "funnel_tl.compare" or data.get("schema_version") != schema_version:
        return data
    return _check(data, obj({"models": list_of(compare_row(row_type))}, COMPARE_SETTINGS), source, HINTS["compare"])


def compare_row(row_type: type) -> Spec:
    """A row of compare.json: every field of ``compare.ComparisonRow`` of the type it declares (so a
    field added there is checked here too), and a failed row carrying its error."""
    hints = get_type_hints(row_type)
    required: dict[str, Spec] = {}
    optional: dict[str, Spec] = {}
    for field in fields(row_type):
        spec = _spec_of(hints[field.name])
        if field.name == "status":
            spec = string(("ok", "failed"))
        missing = field.default is MISSING and field.default_factory is MISSING
        (required if missing else optional)[field.name] = spec
    fields_check = obj(required, optional)

    def check(value, where):
        fields_check(value, where)
        if (value["status"] == "failed") != (value.get("error") is not None):
            raise Bad(_join(where, "error"), "must be given for a failed row, and only for one")

    return check


def _spec_of(annotation) -> Spec:
    """The spec of a dataclass field's type: str, int, float, bool, and ``X | None``."""
    if get_origin(annotation) in (Union, types.UnionType):
        inner = [arg for arg in get_args(annotation) if arg is not type(None)]
        spec = _spec_of(inner[0]) if len(inner) == 1 else (lambda value, where: None)
        return nullable(spec) if type(None) in get_args(annotation) else spec
    return {str: string(), int: integer(), float: number(), bool: boolean()}.get(annotation, lambda value, where: None)
