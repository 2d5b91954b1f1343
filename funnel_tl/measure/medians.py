"""Median per-token gains, robust to outlier tokens, with memory flat in the corpus size.

The seed's gain is a ratio of means: mean‖out‖ / mean‖in‖ per prompt. One token whose norm is
100× the others (position 0's massive activation on real models) moves it by a large factor. The
median over every measured token of the per-token gain g_t = ‖out_t‖ / (‖in_t‖ + 1e-10) is not
moved by a few such tokens. An exact median over a streamed corpus would need every token's gain
of every layer; instead each (component, layer) keeps a histogram of log10 g_t with fixed bins:

- ``BIN_WIDTH`` = 0.001 in log10 (a factor 1.0023 per bin), from 10^``LOW`` to 10^``HIGH``
  (1e-6 to 1e6), plus one bin below and one above the range;
- a quantile is read off the counts as numpy's default (linear) quantile of the tokens would be,
  each token at the centre of its bin: the median of an even count is the mean of the two middle
  tokens' bin centres. Its error is at most half a bin, a factor 10^0.0005 (0.12%, ``MAX_ERROR``);
  a quantile that falls into the bins outside the range is NaN (``quantile`` says so).

Memory: components × layers × 12,002 int64 counts on the device (8.6 MB for 30 layers),
whatever the corpus; counts add across batches and processes exactly.

>>> import torch
>>> histograms = HistogramAccumulator(n_components=1, n_layers=1, device="cpu")
>>> out = torch.tensor([[[1.0, 2.0, 4.0, 100.0]]])            # [layer, batch, pos]
>>> inp = torch.ones(1, 1, 4)
>>> histograms.add(out[None], inp[None], torch.ones(1, 4, dtype=torch.bool))  # [component, layer, batch, pos]
>>> result = histograms.result(("attn",))
>>> round(float(result.quantile("attn", 0.5)[0]), 2)          # (2 + 4) / 2, within half a bin
3.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from funnel_tl.components import gain_ratio

LOW, HIGH = -6.0, 6.0  # log10 of the smallest and largest gain with bins of their own
BIN_WIDTH = 1e-3  # log10 units: a factor 10**0.001 = 1.0023 per bin
N_BINS = int(round((HIGH - LOW) / BIN_WIDTH)) + 2  # the range's bins, and one either side
MAX_ERROR = 10 ** (BIN_WIDTH / 2) - 1  # relative: a token is placed at most half a bin from its gain
METHOD = (
    f"median over every counted token of ||out_t|| / (||in_t|| + 1e-10), read from a histogram of log10 "
    f"of it per layer: bins {BIN_WIDTH:g} wide from {LOW:g} to {HIGH:g} (gains 1e-06 to 1e+06), each "
    f"token at its bin's centre, so within a factor 10^{BIN_WIDTH / 2:g} ({100 * MAX_ERROR:.2f}%) of the "
    "exact median"
)


def bin_index(log10_gains: torch.Tensor) -> torch.Tensor:
    """Bin of each log10 gain: 0 below ``LOW``, ``N_BINS - 1`` at or above ``HIGH``."""
    inside = ((log10_gains - LOW) / BIN_WIDTH).floor_().add_(1)  # in place: one buffer for the lot
    return inside.nan_to_num_(nan=0.0, neginf=0.0, posinf=N_BINS - 1).clamp_(0, N_BINS - 1).long()


def bin_centres() -> np.ndarray:
    """``[bin]`` gain at each bin's centre (the range's ends for the two outer bins)."""
    centres = LOW + (np.arange(N_BINS) - 0.5) * BIN_WIDTH
    centres[0], centres[-1] = LOW, HIGH
    return 10.0**centres


class HistogramAccumulator:
    """Histogram counts ``[component, layer, bin]`` on the device, added batch by batch (``add``)."""

    def __init__(self, n_components: int, n_layers: int, device):
        self.counts = torch.zeros((n_components, n_layers, N_BINS), dtype=torch.int64, device=device)

    def add(self, out_norms: torch.Tensor, in_norms: torch.Tensor, counted: torch.Tensor) -> None:
        """Count the per-token gains out/(in + 1e-10) of every component at once, ``[component,
        layer, batch, pos]`` each, at the ``counted`` ``[batch, pos]`` tokens."""
        gains = gain_ratio(out_norms.float(), in_norms.float())  # [component, layer, batch, pos]
        bins = bin_index(gains.log10_())
        n_components, n_layers = bins.shape[:2]
        # Each (component, layer) row's offset in the flat counts.
        offset = (torch.arange(n_components * n_layers, device=bins.device) * N_BINS).view(n_components, n_layers, 1, 1)
        flat = (bins + offset)[counted.expand_as(bins)]  # [counted tokens × component × layer]
        self.counts.view(-1).index_add_(0, flat, torch.ones_like(flat))

    def result(self, components: tuple[str, ...]) -> TokenHistograms:
        return TokenHistograms(components=components, counts=self.counts.cpu().numpy())


@dataclass(frozen=True)
class TokenHistograms:
    """Counts of per-token log10 gains, ``counts[component, layer, bin]`` (bins as the module docstring)."""

    components: tuple[str, ...]
    counts: np.ndarray

    def __post_init__(self):
        counts = np.asarray(self.counts, dtype=np.int64)
        if counts.ndim != 3 or counts.shape[0] != len(self.components) or counts.shape[2] != N_BINS:
            raise ValueError(
                f"token histograms have shape {counts.shape}, expected [{len(self.components)}, layer, {N_BINS}]"
            )
        if np.any(counts < 0):
            raise ValueError("token histogram counts must be non-negative")
        object.__setattr__(self, "components", tuple(self.components))
        object.__setattr__(self, "counts", counts)

    @property
    def n_layers(self) -> int:
        return self.counts.shape[1]

    def quantile(self, component: str, q: float) -> np.ndarray:
        """``[layer]``: the q-quantile of the per-token gains (numpy's linear method on bin centres);
        NaN where it falls outside the bins' range or no token was counted."""
        counts = self.counts[self.components.index(component)]  # [layer, bin]
        centres = bin_centres()
        values = np.full(counts.shape[0], np.nan)
        for layer, row in enumerate(counts):
            total = int(row.sum())
            if total == 0:
                continue
            rank = q * (total - 1)
            cumulative = np.cumsum(row)
            low, high = (int(np.searchsorted(cumulative, r, side="right")) for r in (np.floor(rank), np.ceil(rank)))
            if min(low, high) == 0 or max(low, high) == N_BINS - 1:
                continue  # outside the range: the bin says only "below 1e-6" or "above 1e6"
            values[layer] = centres[low] + (rank - np.floor(rank)) * (centres[high] - centres[low])
        return values

    def median(self, component: str) -> np.ndarray:
        """``[layer]``: the median per-token gain (see the module docstring)."""
        return self.quantile(component, 0.5)

    def to_dict(self) -> dict[str, Any]:
        """results.json's ``token_histograms``: the method, the bins, and sparse counts per layer."""
        sparse = {}
        for index, component in enumerate(self.components):
            sparse[component] = [[[int(b), int(row[b])] for b in np.flatnonzero(row)] for row in self.counts[index]]
        return {
            "method": METHOD,
            "low_log10": LOW,
            "high_log10": HIGH,
            "bin_width_log10": BIN_WIDTH,
            "n_bins": N_BINS,
            "max_relative_error": MAX_ERROR,
            "counts": sparse,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenHistograms:
        if (data["low_log10"], data["high_log10"], data["bin_width_log10"]) != (LOW, HIGH, BIN_WIDTH):
            raise ValueError("token histograms with other bins than this funnel_tl's")
        components = tuple(data["counts"])
        n_layers = len(next(iter(data["counts"].values()))) if components else 0
        counts = np.zeros((len(components), n_layers, N_BINS), dtype=np.int64)
        for index, component in enumerate(components):
            for layer, pairs in enumerate(data["counts"][component]):
                for b, count in pairs:
                    counts[index, layer, b] = count
        return cls(components=components, counts=counts)
