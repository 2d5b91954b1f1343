"""GainResults built from per-prompt gains we choose, so statistics can be checked against theory.

Each prompt gets ``n_tokens`` tokens with Σ‖in‖ = n_tokens (mean‖in‖ = 1) and
Σ‖out‖ = n_tokens × gain, so its per-prompt gain is ``gain / (1 + 1e-10)``: the chosen value up to
the seed's epsilon.
"""

from __future__ import annotations

import numpy as np

from funnel_tl.components import COMPONENTS
from funnel_tl.results.gains import GainResult


def from_gains(
    gains: dict[str, np.ndarray], model: str = "synthetic/model", definition: str = "seed", n_tokens: int = 12
) -> GainResult:
    """``gains[c]``: ``[prompt, layer]`` per-prompt gains for c in attn, mlp, block."""
    n_prompts, n_layers = np.asarray(gains["attn"]).shape
    tokens = np.full(n_prompts, n_tokens)
    return GainResult(
        model=model,
        definition=definition,
        n_layers=n_layers,
        d_model=64,
        parallel_blocks=True,
        prompts=tuple(f"prompt {i}" for i in range(n_prompts)),
        n_tokens=tokens,
        out_sums={c: np.asarray(gains[c], dtype=np.float64) * n_tokens for c in COMPONENTS},
        in_sums={c: np.full((n_prompts, n_layers), float(n_tokens)) for c in COMPONENTS},
    )


def funnel_like(
    n_layers: int = 8, n_prompts: int = 8, noise: float = 0.15, seed: int = 0, model: str = "synthetic/funnel"
) -> GainResult:
    """A Pythia-1.4B-like profile: attention ≪ 1, MLP < 1 except a late expansion, block ≈ 1.1.

    Per-prompt gains are the profile times lognormal noise of relative size ``noise``.
    """
    rng = np.random.default_rng(seed)
    depth = np.linspace(0, 1, n_layers)
    profile = {
        "attn": 0.08 + 0.4 * depth,
        "mlp": np.where(np.arange(n_layers) == n_layers - 1, 3.6, 0.3 + 0.4 * depth),
        "block": np.full(n_layers, 1.1),
    }
    return from_gains({c: p * rng.lognormal(0, noise, (n_prompts, n_layers)) for c, p in profile.items()}, model=model)
