"""MeasureOptions (issue 24): every measurement option checked once, where the options are built,
and the same options give the same numbers whichever entry point built them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from funnel_tl import head_gains, measure_effects, measure_gains
from funnel_tl.components import COMPONENTS
from funnel_tl.errors import FunnelError
from funnel_tl.measure import options as options_module
from funnel_tl.measure.options import MeasureOptions

PROMPTS = ["The quick brown fox jumps over the lazy dog.", "Water boils at one hundred degrees.", "a b c d e f"]


@pytest.mark.parametrize(
    "field, bad, message",
    [
        ("definition", "resid", "unknown definition 'resid': choose seed or residual"),
        ("batch_size", 0, "batch size must be an integer, at least 1, or auto, got 0"),
        ("batch_size", True, "batch size must be an integer, at least 1, or auto, got True"),
        ("batch_size", 2.5, "batch size must be an integer"),
        ("batch_size", "many", "batch size must be an integer"),
        ("drop_first", -1, "drop_first must be an integer, 0 or more, got -1"),
        ("drop_first", 1.5, "drop_first must be an integer"),
        ("executor", "fast", "unknown executor 'fast': choose auto, hf, transformer_lens"),
        ("max_tokens_per_prompt", 0, "--max-tokens-per-prompt must be at least 1, got 0"),
        ("max_tokens_per_prompt", "lots", "--max-tokens-per-prompt takes a number or 'context'"),
        ("chunk_size", 0, "chunk_size must be an integer, at least 1, got 0"),
        ("keep_texts", "no", "keep_texts must be True or False, got 'no'"),
        ("by_position", 1, "by_position must be True or False, got 1"),
        ("layers", "0-3", "layers must be an integer, a list of integers or None"),
        ("layers", [], "no layers asked for"),
        ("layers", [0, 1.0], "layer 1.0 is not an integer"),
        ("label", "two\nlines", "a label names the model in one line of text"),
    ],
)
def test_each_bad_option_is_named_when_the_options_are_built(field, bad, message):
    with pytest.raises(FunnelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MeasureOptions(**{field: bad})


def test_values_are_kept_as_checked():
    options = MeasureOptions(batch_size=" 8 ", layers=np.array([0, -1]), label="  SmolLM2 ", max_tokens_per_prompt="64")
    assert (options.batch_size, options.layers, options.label, options.max_tokens_per_prompt) == (
        8,
        (0, -1),
        "SmolLM2",
        64,
    )
    assert type(options.layers[0]) is int  # numpy integers become ints: results.json writes them
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.batch_size = 2  # type: ignore[misc]
    assert options.replace(drop_first=1).drop_first == 1 and options.drop_first == 0
    with pytest.raises(FunnelError, match="drop_first must be"):
        options.replace(drop_first=-1)


def test_layers_against_the_model_depth():
    assert MeasureOptions(layers=[-1, 0, 0]).chosen_layers(4) == (0, 3)
    with pytest.raises(FunnelError, match="layer 4 out of range: the model has 4 layers"):
        MeasureOptions(layers=[4]).chosen_layers(4)
    with pytest.raises(FunnelError, match="--by-position needs every layer.*leave out --layers or --by-position"):
        MeasureOptions(layers=[0], by_position=True).chosen_layers(4, flag="--by-position")


def test_options_or_keywords_never_both(bridge):
    model = bridge("gpt2")
    options = MeasureOptions(batch_size=2)
    with pytest.raises(FunnelError, match="drop_first given both as keywords and in options="):
        measure_gains(model, PROMPTS, drop_first=1, options=options)
    with pytest.raises(FunnelError, match="options must be a MeasureOptions, got dict"):
        measure_gains(model, PROMPTS, options={"batch_size": 2})
    with pytest.raises(FunnelError, match="measure_effects does not take by_position"):
        measure_effects(model, PROMPTS, options=MeasureOptions(by_position=True))


def test_each_option_is_checked_once_per_measurement(bridge, monkeypatch):
    """The batch size's check runs when the options are built, and nowhere downstream (the token
    stream, the batches, the engine once each re-checked it)."""
    calls = []
    real = options_module.check_batch_size

    def counting(value):
        calls.append(value)
        return real(value)

    monkeypatch.setattr(options_module, "check_batch_size", counting)
    measure_gains(bridge("gpt2"), PROMPTS, batch_size=2, progress=False)
    assert calls == [2]


def test_the_same_options_give_the_same_numbers(bridge):
    """Options as one object or as keywords: the same tokens, batches and sums, bit for bit; and
    head_gains given the gains' options shares their denominators (the same ‖u_attn‖ sums)."""
    model = bridge("llama-gqa")
    options = MeasureOptions(batch_size=2, drop_first=1, layers=[0, -1])
    by_keywords = measure_gains(model, PROMPTS, batch_size=2, drop_first=1, layers=[0, -1], progress=False)
    by_options = measure_gains(model, PROMPTS, options=options, progress=False)
    for component in COMPONENTS:
        np.testing.assert_array_equal(by_options.out_sums[component], by_keywords.out_sums[component])
        np.testing.assert_array_equal(by_options.in_sums[component], by_keywords.in_sums[component])
    heads = head_gains(model, PROMPTS, options=options, progress=False)
    assert heads.layers == by_options.layers == (0, model.cfg.n_layers - 1)
    # the same hook's norms summed in the same order: equal to float32 rounding of the two reductions
    np.testing.assert_allclose(heads.in_sums, by_options.in_sums["attn"], rtol=1e-6)


def test_gains_from_cache_checks_its_options_as_the_measurements_do(bridge):
    """gains_from_cache is an entry point of its own: plan_hooks takes a checked definition, so a
    misspelt one must be refused here, not read as "seed"."""
    from funnel_tl import gains_from_cache

    model = bridge("gpt2")
    _, cache = model.run_with_cache(torch.tensor([[5, 6, 7, 8]]))
    with pytest.raises(FunnelError, match="unknown definition 'resid': choose seed or residual"):
        gains_from_cache(cache, model, definition="resid")
    with pytest.raises(FunnelError, match="drop_first must be an integer, 0 or more, got -1"):
        gains_from_cache(cache, model, drop_first=-1)
