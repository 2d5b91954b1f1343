"""Head statistics' names and labels (``L3H7``), shared by ``HeadResult`` and its figures."""

from __future__ import annotations

import numpy as np

# What ``top`` and ``heatmap`` can rank or colour by: HeadResult attribute per key.
VALUES = {
    "gain": "head_gains",
    "norm": "head_norms",
    "norm_share": "norm_shares",
    "projection_share": "projection_shares",
}


def norm_decimals(norms) -> int:
    """Decimals for a column of norms: four significant digits for the largest, the same for all
    (``%.4g`` per value printed ``8.49`` beside ``9.302``).

    >>> norm_decimals([20.47, 9.302, 8.49]), norm_decimals([1234.5, 3.0]), norm_decimals([0.012])
    (2, 0, 5)
    """
    largest = max((abs(float(norm)) for norm in norms), default=0.0)
    if not np.isfinite(largest) or largest <= 0:
        return 3
    return max(0, 3 - int(np.floor(np.log10(largest))))


def label(layer: int, head: int) -> str:
    """TransformerLens' head label: ``label(3, 7) == "L3H7"``."""
    return f"L{layer}H{head}"


def shown_heads(n_shown: int, total: int) -> str:
    """How many heads a top-k table shows, for its title (``"All 8"``, ``"Top 3 of 4"``).

    >>> shown_heads(8, 8), shown_heads(3, 4)
    ('All 8', 'Top 3 of 4')
    """
    return f"All {total}" if n_shown == total else f"Top {n_shown} of {total}"
