"""Every norm one forward reads, summed per prompt over all counted tokens and over positions ≥ 1.

The seed's gains read four to six activations per layer. The same forward costs little more
(a norm and a masked sum each) to read what the rest of the truth about a model needs:

- both definitions' inputs (u, what the module receives, and the stream x), so that the other
  definition's gains and verdict come from the same forward (``GainResult.in_definition``);
- for sandwich and post-norm blocks, each module's own output *before* its post-norm, so that a
  seed gain splits into the module's own gain and the post-norm's (``GainResult.module_gains``);
- every norm summed twice: over all counted tokens (the seed's sums) and over positions ≥ 1 only
  (position 0 carries the attention sink's massive activations on real models), so that the
  gains without position 0 come in every run (``GainResult.without_first(1)``), exactly as a run
  with ``drop_first=1`` sums them (the same float32 reduction with position 0 masked out).

Roles (hook names of ``architectures.HookPlan.roles``; x = ``hook_resid_pre`` and so on):

===================  ==========================================================================
role                 the tensor
===================  ==========================================================================
``resid_pre``        x, the block's input
``resid_mid``        x + a (serial blocks only)
``resid_post``       x + a + m
``attn_out``         a, what attention adds to the stream (after a post-norm, if any)
``mlp_out``          m, what the MLP adds
``attn_in``          u_attn, what the attention module receives (the stream itself for post-norm blocks)
``mlp_in``           u_mlp
``attn_module_out``  sandwich / post-norm: the attention module's output before its post-norm
``mlp_module_out``   sandwich / post-norm: the MLP's output before its post-norm
===================  ==========================================================================

``attn_in`` and ``mlp_in`` are absent where the model has no norm output to read (the residual
definition alone), the module outputs where no post-norm follows the sublayers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

ROLES = (
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "attn_in",
    "mlp_in",
    "attn_module_out",
    "mlp_module_out",
)


def definition_roles(definition: str, parallel: bool) -> dict[str, tuple[str, str]]:
    """component -> (output role, input role) of ``definition`` (``results``' glossary).

    >>> definition_roles("residual", parallel=False)["mlp"]
    ('mlp_out', 'resid_mid')
    """
    if definition == "seed":
        return {"attn": ("attn_out", "attn_in"), "mlp": ("mlp_out", "mlp_in"), "block": ("resid_post", "resid_pre")}
    return {
        "attn": ("attn_out", "resid_pre"),
        "mlp": ("mlp_out", "resid_pre" if parallel else "resid_mid"),
        "block": ("resid_post", "resid_pre"),
    }


@dataclass(frozen=True)
class ReadSums:
    """Per-prompt sums of every role's per-token norm; ``GainResult.reads``.

    Shapes: ``sums[role]`` and ``sums_from_1[role]`` are ``[prompt, layer]`` sums of ‖role‖ over
    the counted tokens and over the counted tokens at position ≥ 1; ``n_tokens_from_1`` is
    ``[prompt]``, the tokens of the second. ``reads[role]`` says, in words, which hook it came
    from (``HookPlan.describe_roles``).
    """

    reads: dict[str, str]
    sums: dict[str, np.ndarray]
    sums_from_1: dict[str, np.ndarray]
    n_tokens_from_1: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "n_tokens_from_1", np.asarray(self.n_tokens_from_1, dtype=np.int64))
        n_prompts = len(self.n_tokens_from_1)
        if set(self.sums) != set(self.reads) or set(self.sums_from_1) != set(self.reads):
            raise ValueError(f"read sums must cover the roles read, {sorted(self.reads)}")
        unknown = set(self.reads) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}: choose from {', '.join(ROLES)}")
        shape = None
        for sums in (self.sums, self.sums_from_1):
            for role in list(sums):
                array = np.asarray(sums[role], dtype=np.float64)
                shape = shape or array.shape
                if array.ndim != 2 or array.shape != shape or array.shape[0] != n_prompts:
                    raise ValueError(f"{role} read sums have shape {array.shape}, expected [{n_prompts}, layer]")
                if not np.all(np.isfinite(array)) or np.any(array < 0):
                    raise ValueError(f"{role} read sums must be finite and non-negative")
                sums[role] = array

    @property
    def n_prompts(self) -> int:
        return len(self.n_tokens_from_1)

    def has(self, *roles: str) -> bool:
        return all(role in self.reads for role in roles)

    def subset(self, prompt_indices) -> ReadSums:
        index = np.asarray(prompt_indices, dtype=np.int64)
        return replace(
            self,
            sums={r: v[index] for r, v in self.sums.items()},
            sums_from_1={r: v[index] for r, v in self.sums_from_1.items()},
            n_tokens_from_1=self.n_tokens_from_1[index],
        )

    def from_position_1(self) -> ReadSums:
        """The sums as a run with ``drop_first=1`` keeps them (its "all" tokens are these from 1)."""
        return replace(self, sums=dict(self.sums_from_1))

    # ---- results.json ------------------------------------------------------------------------
    def to_dict(self, written: dict[str, Any] | None = None) -> dict[str, Any]:
        """``per_prompt["reads"]`` of results.json. ``written``: role -> the array already written
        under the seed's per_prompt keys (the definition's own sums), left out here."""
        written = written or {}
        return {
            "reads": dict(self.reads),
            "n_tokens_from_1": self.n_tokens_from_1.tolist(),
            "sums": {role: values.tolist() for role, values in self.sums.items() if role not in written},
            "sums_from_1": {role: values.tolist() for role, values in self.sums_from_1.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], written: dict[str, np.ndarray], width: int) -> ReadSums:
        """The inverse of ``to_dict``; ``written`` gives the roles it left out."""

        def array(values) -> np.ndarray:
            return np.asarray(values, dtype=np.float64).reshape(-1, width)

        sums = {role: array(values) for role, values in data["sums"].items()}
        for role in data["reads"]:
            if role not in sums:
                sums[role] = written[role]
        return cls(
            reads=dict(data["reads"]),
            sums=sums,
            sums_from_1={role: array(values) for role, values in data["sums_from_1"].items()},
            n_tokens_from_1=np.asarray(data["n_tokens_from_1"], dtype=np.int64),
        )
