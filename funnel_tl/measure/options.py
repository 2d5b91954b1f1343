"""One measurement's options, checked once: what is read, how it is batched, what the result keeps.

``measure_gains``, ``head_gains`` and ``measure_effects`` take the same options. Every entry point
builds one ``MeasureOptions`` and checks it there, once: the API from its keyword arguments
(``MeasureOptions.given``), the CLI from its flags (each flag's ``type=`` is the check below),
a sweep once for all its models, torchrun once for all its ranks. Everything downstream (the
token stream, the batches, the engine, the hook plan) takes the values as checked. What can only
be checked against a model (a layer past its depth, ``"context"`` for a model that states none)
is checked by ``chosen_layers`` and the tokenizer once the model is there.

Nothing here imports torch or numpy: the CLI checks its flags before anything heavy loads.

>>> options = MeasureOptions(batch_size="16", drop_first=1, layers=[0, -1])
>>> options.batch_size, options.layers, options.chosen_layers(8)
(16, (0, -1), (0, 7))
>>> MeasureOptions(definition="resid")
Traceback (most recent call last):
funnel_tl.errors.FunnelError: unknown definition 'resid': choose seed or residual
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from funnel_tl.components import DEFINITIONS
from funnel_tl.errors import FunnelError
from funnel_tl.measure.layers import check_layer_selection, layers_in_model
from funnel_tl.results.folders import check_label

# Who runs the forward passes (funnel_tl.measure.engine): "auto" is the HF modules behind the TL
# hooks where they agree with the TL hooks on the first batch.
EXECUTORS = ("auto", "hf", "transformer_lens")


def check_definition(definition: Any) -> str:
    """``"seed"`` (‖out‖ over the norm output a sublayer reads) or ``"residual"`` (over the stream)."""
    if definition not in DEFINITIONS:
        raise FunnelError(f"unknown definition {definition!r}: choose seed or residual")
    return str(definition)


def check_batch_size(batch_size: Any) -> int | Literal["auto"]:
    """Prompts per forward: a whole number, 1 or more (or its digits), or ``"auto"``.

    >>> check_batch_size("8"), check_batch_size("auto")
    (8, 'auto')
    """
    if isinstance(batch_size, str):
        text = batch_size.strip()
        if text == "auto":
            return "auto"
        if text.isdigit() and int(text) >= 1:
            return int(text)
    elif isinstance(batch_size, numbers.Integral) and not isinstance(batch_size, bool) and int(batch_size) >= 1:
        return int(batch_size)
    raise FunnelError(f"batch size must be an integer, at least 1, or auto, got {batch_size!r}")


def check_drop_first(drop_first: Any) -> int:
    """Leading positions left out of every prompt: a whole number, 0 or more."""
    if isinstance(drop_first, bool) or not isinstance(drop_first, numbers.Integral) or drop_first < 0:
        raise FunnelError(f"drop_first must be an integer, 0 or more, got {drop_first!r}")
    return int(drop_first)


def check_max_tokens(max_tokens: Any) -> int | Literal["context"] | None:
    """Tokens kept per prompt: None (a longer prompt than the context is an error), a number, or
    ``"context"`` (the model's context, known once it is loaded: ``prompts.truncation_limit``)."""
    if max_tokens is None or max_tokens == "context":
        return max_tokens
    if isinstance(max_tokens, str) and max_tokens.strip().lstrip("+-").isdigit():
        max_tokens = int(max_tokens)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, numbers.Integral):
        raise FunnelError(f"--max-tokens-per-prompt takes a number or 'context', got {max_tokens!r}")
    if max_tokens < 1:
        raise FunnelError(f"--max-tokens-per-prompt must be at least 1, got {max_tokens}")
    return int(max_tokens)


def check_executor(executor: Any) -> str:
    """One of ``EXECUTORS``."""
    if executor not in EXECUTORS:
        raise FunnelError(f"unknown executor {executor!r}: choose {', '.join(EXECUTORS)}")
    return str(executor)


def check_chunk_size(chunk_size: Any) -> int | None:
    """Prompts read at a time, 1 or more; None: ``streaming.CHUNK_PROMPTS``."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise FunnelError(f"chunk_size must be an integer, at least 1, got {chunk_size!r}")
    return int(chunk_size)


def check_flag(value: Any, name: str) -> bool:
    """A yes/no option: True or False, not a truthy stand-in that would hide a misplaced argument."""
    if not isinstance(value, bool):
        raise FunnelError(f"{name} must be True or False, got {value!r}")
    return value


@dataclass(frozen=True)
class MeasureOptions:
    """The options of ``measure_gains``, ``head_gains`` and ``measure_effects``, checked when built.

    Values are kept as checked and normalized (``batch_size="8"`` becomes 8, a list of layers a
    tuple); building one with a bad value raises ``FunnelError`` naming it, before any prompt is
    read or model run. The same options give the same tokens and batches to every measurement:
    ``measure_gains(model, prompts, options=options)`` and ``head_gains(model, prompts,
    options=options)`` share their denominators.

    Attributes:
        definition: ``"seed"`` (‖out‖ over the LayerNorm output the sublayer reads) or
            ``"residual"`` (‖out‖ over the residual stream it reads).
        batch_size: prompts per forward, or ``"auto"`` (a token budget from the free GPU memory on
            CUDA, ``engine.CPU_BATCH_SIZE`` elsewhere). Changes no number.
        drop_first: leading positions left out of every prompt (position 0 often has a huge
            norm: attention sinks, massive activations).
        executor: ``"auto"``, ``"hf"`` or ``"transformer_lens"`` (``funnel_tl.measure.engine``).
        max_tokens_per_prompt: keep only the first tokens of longer prompts (a number, or
            ``"context"`` for the model's context), recorded in the provenance; None: a prompt
            longer than the context is an error.
        chunk_size: prompts read, tokenized and measured at a time (None:
            ``streaming.CHUNK_PROMPTS``); changes no number beyond float32 rounding.
        keep_texts: keep the prompt texts in the result (False: their count and sha256 only).
        by_position: also keep the sums by position bucket (``funnel_tl.results.positions``).
        layers: the layers to measure, as given (negative ones count from the end); None: all.
        label: the name the result carries in place of the model's (one line of text).
    """

    definition: str = "seed"
    batch_size: int | str = "auto"  # checked: an int, or "auto"
    drop_first: int = 0
    executor: str = "auto"
    max_tokens_per_prompt: int | str | None = None  # checked: an int, "context" or None
    chunk_size: int | None = None
    keep_texts: bool = True
    by_position: bool = False
    layers: tuple[int, ...] | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        checked = {
            "definition": check_definition(self.definition),
            "batch_size": check_batch_size(self.batch_size),
            "drop_first": check_drop_first(self.drop_first),
            "executor": check_executor(self.executor),
            "max_tokens_per_prompt": check_max_tokens(self.max_tokens_per_prompt),
            "chunk_size": check_chunk_size(self.chunk_size),
            "keep_texts": check_flag(self.keep_texts, "keep_texts"),
            "by_position": check_flag(self.by_position, "by_position"),
            "layers": check_layer_selection(self.layers),
            "label": check_label(self.label),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)  # frozen: the checked form is set once, here

    @classmethod
    def given(cls, options: MeasureOptions | None, **keywords: Any) -> MeasureOptions:
        """The options of a call that takes both ``options=`` and the same options as keywords.

        Args:
            options: the caller's ``MeasureOptions``, or None to build them from ``keywords``.
            **keywords: the call's keyword options (``definition=``, ``batch_size=``, ...): with
                ``options`` given, each must stay at its default, so no value is silently dropped.

        Returns:
            The checked options.
        """
        if options is None:
            return cls(**keywords)
        if not isinstance(options, cls):
            raise FunnelError(f"options must be a MeasureOptions, got {type(options).__name__}")
        defaults = cls()
        changed = [name for name, value in keywords.items() if value != getattr(defaults, name)]
        if changed:
            raise FunnelError(
                f"{', '.join(changed)} given both as keywords and in options=: give each option one way, "
                f"e.g. options=dataclasses.replace(options, {changed[0]}=...)"
            )
        return options

    def replace(self, **changes: Any) -> MeasureOptions:
        """These options with some changed, checked as when built.

        Args:
            **changes: new values by field name (``drop_first=1``, ``layers=[0, 1]``).

        Returns:
            New options; these stay as they are.
        """
        return dataclasses.replace(self, **changes)

    def refuse(self, names: Sequence[str], measurement: str) -> None:
        """Fail when an option ``measurement`` does not read is set away from its default.

        Args:
            names: the fields ``measurement`` does not read.
            measurement: its name, for the message (``"measure_effects"``).
        """
        defaults = MeasureOptions()
        for name in names:
            if getattr(self, name) != getattr(defaults, name):
                raise FunnelError(f"{measurement} does not take {name}: leave it at {getattr(defaults, name)!r}")

    def chosen_layers(self, n_layers: int, flag: str = "by_position") -> tuple[int, ...]:
        """The measured layers of a model of ``n_layers``: distinct, ascending, true indices.

        Args:
            n_layers: the model's depth.
            flag: how the refusal names ``by_position`` (the CLI says ``--by-position``).

        Returns:
            The layers, ``[layer]`` ascending; refused when one is past the model's depth, or when
            ``by_position`` asks for the sink analysis (a Funnel verdict, which needs every layer)
            on some layers only.
        """
        chosen = layers_in_model(self.layers, n_layers)
        if self.by_position and len(chosen) < n_layers:
            option = "--layers" if flag.startswith("--") else "layers"
            raise FunnelError(
                f"{flag} needs every layer (its sink analysis gives the Funnel verdict): leave out {option} or {flag}"
            )
        return chosen
