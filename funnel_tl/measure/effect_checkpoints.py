"""measure_effects' checkpoints: the partial effects.json a long run resumes from."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from funnel_tl.components import EFFECT_COMPONENTS
from funnel_tl.errors import FunnelError
from funnel_tl.measure.options import MeasureOptions
from funnel_tl.models.identity import model_name, source_provenance
from funnel_tl.prompts.sets import prompts_sha256
from funnel_tl.results.effects import EffectResult
from funnel_tl.results.files import read_json, write_json_atomic

# A partial effects.json is written at most this often (seconds): each write holds every prompt so far.
CHECKPOINT_SECONDS = 30.0


class CheckpointStore:
    """Per-prompt values as batches finish (and as read from an unfinished checkpoint)."""

    KEYS = ("clean_loss", "n_predicted", "n_positions")

    def __init__(self, n_prompts: int, n_jobs: int, done: dict | None):
        self.values = {key: np.zeros(n_prompts) for key in self.KEYS}
        self.values["delta_loss"] = np.zeros((n_prompts, n_jobs))
        self.values["kl"] = np.zeros((n_prompts, n_jobs))
        self.measured = np.zeros(n_prompts, dtype=bool)
        if done:
            rows = np.asarray(done["rows"], dtype=np.int64)
            for key, values in done["values"].items():
                self.values[key][rows] = values
            self.measured[rows] = True

    def put(self, indices, values: dict[str, np.ndarray]) -> None:
        for key, array in values.items():
            self.values[key][indices] = array
        self.measured[indices] = True

    def partial(self) -> dict:
        rows = np.flatnonzero(self.measured)
        return {"rows": rows.tolist(), **{key: self.values[key][rows].tolist() for key in self.values}}

    def result(self, *, interventions, layers, **fields) -> EffectResult:
        width = len(layers)
        tables: dict[str, Any] = {measure: {} for measure in ("delta_loss", "kl")}
        for measure in tables:
            job = 0
            for spec in interventions:
                tables[measure][spec.name] = {}
                for component in EFFECT_COMPONENTS:
                    tables[measure][spec.name][component] = self.values[measure][:, job : job + width].copy()
                    job += width
        return EffectResult(
            layers=layers,
            interventions=tuple(spec.name for spec in interventions),
            n_predicted=self.values["n_predicted"].astype(np.int64),
            n_positions=self.values["n_positions"].astype(np.int64),
            clean_loss=self.values["clean_loss"],
            **tables,
            **fields,
        )


# ---- checkpoints (resume) -----------------------------------------------------------------------
def checkpoint_settings(
    model, prompt_list: Sequence[str], specs, layers: Sequence[int], options: MeasureOptions, parameter
) -> dict:
    """Every setting that changes a number: a checkpoint is resumed only when all of them match.

    ``layers``: the true indices measured; ``options``: the measurement's (its definition,
    ``drop_first``, truncation and label); ``parameter``: one of the model's, for its dtype and device.
    """
    max_tokens = options.max_tokens_per_prompt
    return {
        "model": model_name(model),
        **source_provenance(model),
        **({"label": options.label} if options.label else {}),
        "prompts_sha256": prompts_sha256(prompt_list),
        "n_prompts": len(prompt_list),
        "interventions": [spec.name for spec in specs],
        "layers": list(layers),
        "definition": options.definition,
        "drop_first": options.drop_first,
        "max_tokens_per_prompt": None if max_tokens is None else str(max_tokens),
        "dtype": str(parameter.dtype).removeprefix("torch."),
        "device": parameter.device.type,
    }


def read_checkpoint(path, settings: dict, intervals: bool):
    """A finished result of the same settings, an unfinished one's rows, or None (nothing to resume)."""
    if path is None or not Path(path).is_file():
        return None
    try:
        data = read_json(path)
    except FunnelError as error:
        warnings.warn(f"{error}: measuring again", stacklevel=3)
        return None
    stored = (
        data.get("settings")
        if not data.get("complete", False)
        else (data.get("provenance") or {}).get("effect_settings")
    )
    if data.get("kind") != "effects" or stored != settings:
        differs = _first_difference(stored, settings)
        warnings.warn(
            f"{path} was measured with other settings ({differs}): measuring again and replacing it", stacklevel=3
        )
        return None
    if data.get("complete", False):
        result = EffectResult.from_dict(data, source=str(path))
        tqdm.write(
            f"{path}: finished earlier with the same settings, read back (--force measures again)", file=sys.stderr
        )
        if intervals and result.intervals is None and result.n_prompts >= 2:
            result = result.with_intervals()
        return result
    try:
        per_prompt = data["per_prompt"]
        values = {key: np.asarray(per_prompt[key], dtype=np.float64) for key in per_prompt if key != "rows"}
        return {"rows": per_prompt["rows"], "values": values}
    except (KeyError, TypeError, ValueError):
        warnings.warn(f"{path} is an unfinished effects file that cannot be read: measuring again", stacklevel=3)
        return None


def _first_difference(stored, settings: dict) -> str:
    if not isinstance(stored, dict):
        return "not an effects file of this funnel_tl"
    for key, value in settings.items():
        if stored.get(key) != value:
            return f"{key} {stored.get(key)!r}, now {value!r}"
    return "settings recorded differently"


def write_partial(path, settings: dict, name: str, store: CheckpointStore) -> None:
    """An unfinished effects.json: what the next run with the same settings continues from."""
    try:
        write_json_atomic(
            path,
            {
                "schema_version": 1,
                "kind": "effects",
                "complete": False,
                "model": name,
                "settings": settings,
                "per_prompt": store.partial(),
            },
        )
    except OSError as error:  # the measurement goes on; the final write reports the disk
        warnings.warn(f"could not write the checkpoint {path}: {error}", stacklevel=2)
