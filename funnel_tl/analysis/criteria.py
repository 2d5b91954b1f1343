"""How many expanding MLP layers "the MLP mostly contracts" allows: the seed's rule and a depth-scaled one.

A leaf module (it imports nothing of funnel_tl's but the error type), read by both the seed's
verdict (``funnel``) and the robust verdict (``robust``); so is ``not_testable``, the one rule on
when either verdict may be given at all.

The seed tested Pythia-1.4B and allowed three of its 24 MLP layers to expand
(``mlp_contracting >= n_layers - 3``). Taken literally at another depth, that rule cannot fail
for a model of three layers or fewer: nano-2l "mostly contracts" with both MLP gains above 3.
The seed's verdict keeps the literal rule (reproducing the notebook matters) and says so when it
cannot fail; the robust verdict scales the allowance with depth instead: one eighth of the
layers, rounded down (the seed's 3 of 24), but at least one, since criterion 3 expects the last
layer's MLP to expand: 1 for a model of up to 15 layers, 2 for 16, 3 for 24, 4 for 32.
"""

from __future__ import annotations

from funnel_tl.errors import FunnelError

# The seed allows up to three expanding MLP layers for "MLP mostly contracts".
MLP_EXPANDING_ALLOWED = 3
# Pythia-1.4B's layers: the robust verdict allows the seed's 3 of these 24, in proportion.
SEED_N_LAYERS = 24


def mlp_expanding_allowed(n_layers: int) -> int:
    """The depth-scaled allowance: ``max(1, floor(n_layers / 8))`` MLP layers may fail to contract.

    >>> [mlp_expanding_allowed(n) for n in (2, 8, 16, 24, 32)]
    [1, 1, 2, 3, 4]
    """
    # Integers: floor(n * 3 / 24) exactly, with no float ratio to round below a whole number.
    return max(1, n_layers * MLP_EXPANDING_ALLOWED // SEED_N_LAYERS)


def seed_rule_cannot_fail(n_layers: int) -> bool:
    """Whether the seed's literal "MLP mostly contracts" holds whatever the gains (n_layers <= 3).

    >>> seed_rule_cannot_fail(2), seed_rule_cannot_fail(4)
    (True, False)
    """
    return n_layers - MLP_EXPANDING_ALLOWED <= 0


def not_testable(result) -> str | None:
    """Why the Funnel verdicts cannot be given for ``result`` (some layers only), or None.

    >>> from types import SimpleNamespace
    >>> not_testable(SimpleNamespace(layers=(0, 1, 2, 3), n_layers=24, layer_spans="0-3"))
    'not testable: layers 0-3 of 24 measured, and the Funnel verdicts need every layer'
    """
    if len(result.layers) == result.n_layers:
        return None
    return (
        f"not testable: layers {result.layer_spans} of {result.n_layers} measured, "
        "and the Funnel verdicts need every layer"
    )


def require_all_layers(result, what: str = "the Funnel test") -> None:
    """Refuse a verdict on a result measured on some layers only, in one line that says what to do."""
    why_not = not_testable(result)
    if why_not is not None:
        raise FunnelError(
            f"{result.model}: {what} is {why_not}: measure with layers=None (funnel-tl run without --layers)"
        )
