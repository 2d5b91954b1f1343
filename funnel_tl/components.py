"""What every module shares: the sublayers measured, the two definitions, the seed's zero guard, the gain formula."""

from __future__ import annotations

COMPONENTS = ("attn", "mlp", "block")
DEFINITIONS = ("seed", "residual")
# The seed notebook's guard against a zero denominator, kept so numbers match it exactly.
EPSILON = 1e-10
# Keys of results.json, as the seed names the components.
KEYS = {"attn": "attention", "mlp": "mlp", "block": "block", "combined": "combined"}
# What an intervention changes: the attention or the MLP sublayer's contribution to the stream.
EFFECT_COMPONENTS = ("attention", "mlp")
# The GainResult's name of each effect component.
GAIN_COMPONENT = {"attention": "attn", "mlp": "mlp"}


def gain_ratio(out_norm, in_norm):
    """The gain, the one formula every result uses: mean‖out‖ / (mean‖in‖ + 1e-10), elementwise.

    Takes mean norms (per prompt, per prompt and position bucket, per head, or per token), as numpy
    arrays or torch tensors of one shape (or broadcasting); the seed's zero guard keeps its numbers.

    >>> round(float(gain_ratio(2.0, 4.0)), 9), float(gain_ratio(1.0, 0.0))
    (0.5, 10000000000.0)
    """
    return out_norm / (in_norm + EPSILON)
