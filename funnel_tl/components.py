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
