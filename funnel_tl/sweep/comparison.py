"""``Comparison``: a sweep's rows and results, its table and page, assembled once every target is done."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from funnel_tl.errors import FunnelError
from funnel_tl.results.files import require_pandas, write_json_atomic
from funnel_tl.results.folders import describe_os_error
from funnel_tl.results.gains import GainResult
from funnel_tl.results.gains_file import gain_rows
from funnel_tl.sweep.one_target import SweepOptions, finished_result, gains_at, resumed_row
from funnel_tl.sweep.plan import Target, model_identity
from funnel_tl.sweep.rows import ComparisonRow, compare_dict, ordered_rows, read_compare_json, row_identity

if TYPE_CHECKING:  # plotly is imported by the figures, on first use
    import plotly.graph_objects as go


def kept_rows(
    earlier: Sequence[ComparisonRow],
    targets: Sequence[Target],
    rows: list[ComparisonRow],
    results: dict,
    out: Path,
    settings: dict,
    options: SweepOptions,
) -> tuple[list[ComparisonRow], dict]:
    """This sweep's rows with the earlier table's other rows, each read back from its results
    file (a row whose file is gone or no longer matches says so, and stays), in table order."""
    named = {target.label for target in targets}
    order, others = [], []  # the final table's labels in the earlier table's order; rows kept as they are
    for row in earlier:
        if row.model in named:
            order.append(row.model)
        elif row_identity(row) in named:
            # A table written before models were known by identity names a local folder as it was
            # typed (``ckpts@step0``): where that is one of this run's models, this run's row replaces it.
            order.append(row_identity(row))
        else:
            order.append(row.model)
            others.append(row)
    kept = []
    for row in others:
        row = dataclasses.replace(row, base=model_identity(row.base)) if row.base else row  # grouped by identity
        if row.ok:
            target = Target(row.model, row.base or row.model, row.base or row.model, row.revision, row.step)
            path = out / row.slug / "results.json"
            finished = finished_result(path, target, settings)
            if finished is not None:
                row, results[row.model] = resumed_row(target, path, finished, options, quiet=True)
            else:
                row = dataclasses.replace(
                    row,
                    status="failed",
                    resumed=True,
                    error=f"{path} is gone or no longer matches this table: name this model in a rerun to measure it "
                    "again",
                )
        kept.append(row)
    if others:
        tqdm.write(
            f"kept {len(others)} rows of the table already in {out} (models this run does not name)", file=sys.stderr
        )
    table: dict[str, ComparisonRow | None] = dict.fromkeys(order)  # each row in its place, new ones after
    table.update({row.model: row for row in kept + rows})
    return ordered_rows(row for row in table.values() if row is not None), results


def finish_sweep(
    rows: list[ComparisonRow], results: dict, settings: dict, out: Path, self_contained: bool
) -> Comparison:
    """The ``Comparison`` of a finished sweep, its compare.json and compare.html written."""
    comparison = Comparison(rows=tuple(rows), results=results, settings=settings, out=out)
    try:
        comparison.save(out, self_contained=self_contained)
    except OSError as error:
        measured = sum(row.ok for row in rows)
        raise FunnelError(
            f"{measured} of {len(rows)} models measured (their results.json files are in {out}), but "
            f"compare.json/compare.html could not be written ({describe_os_error(error)}): free space "
            "and rerun the same command, which reads them back without measuring again"
        ) from None
    return comparison


# ---- the result ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """A finished sweep: one ``ComparisonRow`` per target, and the ``GainResult`` of each that ran.

    ``rows`` keep the sweep's order (models as given, checkpoints by step); ``results`` maps a
    row's ``model`` label to its ``GainResult`` for every row whose status is ``"ok"``.

    >>> sweep = Comparison.load("runs/compare")  # doctest: +SKIP
    >>> [row.model for row in sweep.failed]  # doctest: +SKIP
    []
    """

    rows: tuple[ComparisonRow, ...]
    results: dict[str, GainResult] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None

    def __post_init__(self):
        object.__setattr__(self, "rows", tuple(self.rows))
        labels = [row.model for row in self.rows]
        if len(set(labels)) != len(labels):
            raise ValueError("every row of a comparison needs its own model label")
        missing = [row.model for row in self.rows if row.ok and row.model not in self.results]
        if missing:
            raise ValueError(f"rows marked ok have no results: {missing}")

    def __repr__(self) -> str:  # every row and result would flood a notebook cell
        labels = [row.model for row in self.rows]
        shown = ", ".join(repr(label) for label in labels[:4]) + (", …" if len(labels) > 4 else "")
        return (
            f"Comparison({len(self.rows)} models: [{shown}], failed={len(self.failed)}, "
            f"definition={self.settings.get('definition')!r}, out={str(self.out) if self.out else None!r})"
        )

    @property
    def ok(self) -> list[ComparisonRow]:
        return [row for row in self.rows if row.ok]

    @property
    def failed(self) -> list[ComparisonRow]:
        return [row for row in self.rows if not row.ok]

    def row(self, model: str) -> ComparisonRow:
        """One model's row.

        Args:
            model: the row's label, as the sweep names it (``"EleutherAI/pythia-70m"``, a local
                folder's resolved path, ``"nano-4l@step1000"`` for a checkpoint).

        Returns:
            Its ``ComparisonRow``; ``KeyError`` when the sweep has no such row.
        """
        for row in self.rows:
            if row.model == model:
                return row
        raise KeyError(model)

    def to_dict(self) -> dict[str, Any]:
        return compare_dict(self.rows, self.settings)

    # ---- figures -----------------------------------------------------------------------------
    def figure(self) -> go.Figure:
        """Attention, MLP and block gains of every model on normalized depth, overlaid."""
        # Imported on use: keeps plotly out of importing this module.
        from funnel_tl.plots.compare import plot_depth_overlay

        return plot_depth_overlay(self)

    def heatmap(self, component: str = "mlp") -> go.Figure:
        """Models × normalized depth, coloured by gain on a log scale (blue contracts, red expands).

        Args:
            component: ``"attn"``, ``"mlp"`` or ``"block"``.

        Returns:
            A Plotly figure: one heatmap row per measured model, depth ``layer / (n_layers - 1)``.
        """
        # Imported on use: keeps plotly out of importing this module.
        from funnel_tl.plots.compare import plot_depth_heatmap

        return plot_depth_heatmap(self, component)

    def training_figure(self, base: str | None = None) -> go.Figure:
        """Per-layer attention and MLP gains against training step.

        Args:
            base: a model swept over checkpoints (a name of ``checkpoint_models``); None: one row
                of panels per such model.

        Returns:
            A Plotly figure, one line per layer coloured by depth, training step on x.
        """
        # Imported on use: keeps plotly out of importing this module.
        from funnel_tl.plots.training import plot_training

        return plot_training(self, base)

    @property
    def checkpoint_models(self) -> list[str]:
        """Models with at least two measured checkpoints (those a training figure can show)."""
        counts: dict[str, int] = {}
        for row in self.ok:
            if row.step is not None:
                counts[row.base] = counts.get(row.base, 0) + 1
        return [base for base, count in counts.items() if count >= 2]

    def to_pandas(self):
        """Every measured model's gains as one tidy table (pandas, imported here).

        One row per model, layer and component: the columns of ``GainResult.to_pandas`` (model,
        layer, component, gain, ci_low, ci_high, n_prompts) plus ``step`` (the training step of a
        checkpoint: pandas' nullable ``Int64``, ``<NA>`` for a plain model) and ``depth``
        (layer / (n_layers - 1)).

        >>> mlp = sweep.to_pandas().query("component == 'mlp'")  # doctest: +SKIP
        >>> mlp.pivot(index="depth", columns="model", values="gain")  # doctest: +SKIP
        >>> sweep.to_pandas()["step"].dtype  # doctest: +SKIP
        Int64Dtype()
        """
        pd = require_pandas()
        rows = []
        for row in self.ok:
            result = self.results[row.model]
            for line in gain_rows(result):
                line["model"] = row.model  # the sweep's label (names the checkpoint)
                line["step"] = row.step
                line["depth"] = line["layer"] / max(result.n_layers - 1, 1)
                rows.append(line)
        frame = pd.DataFrame(
            rows, columns=["model", "step", "layer", "depth", "component", "gain", "ci_low", "ci_high", "n_prompts"]
        )
        return frame.astype({"step": "Int64"})  # integers, <NA> for a plain model (not floats with NaN)

    def format_table(self) -> str:
        """The verdict table as plain text, for the terminal.

        Columns are as wide as their widest cell, so a gain of 1000 or more (or a layer 100) does
        not push the later columns out of line. Models are named as the page names them: a local
        folder by its last part (its full path stays in compare.json), unless two would share a name.
        """
        # Imported on use: keeps plotly out of importing this module.
        from funnel_tl.plots.compare_page import format_seconds
        from funnel_tl.plots.sweep_style import short_labels

        titles = ("model", "layers", "funnel", "robust", "attn min", "mlp max", "last mlp", "comb max", "measure")
        ok = [row for row in self.rows if row.ok]
        columns = {
            "layers": [str(row.n_layers) for row in ok],
            "funnel": [str(row.funnel_confirmed) for row in ok],
            "robust": ["–" if row.robust_funnel_confirmed is None else str(row.robust_funnel_confirmed) for row in ok],
            "attn min": gains_at([(row.attn_min_gain, row.attn_min_layer) for row in ok]),
            "mlp max": gains_at([(row.mlp_max_gain, row.mlp_max_layer) for row in ok]),
            "last mlp": [f"{row.last_layer_mlp_gain:.3f}" for row in ok],
            "comb max": gains_at([(row.combined_max_gain, row.combined_max_layer) for row in ok]),
            "measure": [format_seconds(row.measure_seconds) for row in ok],
        }
        widths = {title: max([len(title), *map(len, cells)]) for title, cells in columns.items()}
        header = "  ".join([f"{'model':<34}", *(f"{title:>{widths[title]}}" for title in titles[1:])])
        lines = [header, "-" * len(header)]
        cells = iter(zip(*columns.values(), strict=True))
        names = short_labels(self.rows)  # a local folder by its last part, as the page names it
        for row in self.rows:
            name = names[row.model] if len(names[row.model]) <= 34 else "…" + names[row.model][-33:]
            if not row.ok:
                lines.append(f"{name:<34} FAILED: {row.error}")
                continue
            lines.append(
                "  ".join(
                    [
                        f"{name:<34}",
                        *(f"{cell:>{widths[title]}}" for title, cell in zip(titles[1:], next(cells), strict=False)),
                    ]
                )
            )
        return "\n".join(lines)

    # ---- files -------------------------------------------------------------------------------
    def save(self, out: str | os.PathLike, self_contained: bool = False) -> tuple[Path, Path]:
        """Write ``compare.json`` and ``compare.html`` into ``out``, each atomically.

        Args:
            out: the sweep's folder.
            self_contained: embed plotly.js in the page; by default it loads ``out/plotly.min.js``
                (written once, shared with the pages ``funnel-tl report`` writes below ``out``).

        Returns:
            The paths of compare.json and compare.html.
        """
        out = Path(out)
        json_path = write_json_atomic(out / "compare.json", self.to_dict())
        return json_path, self.save_html(out, self_contained)

    def save_html(
        self, out: str | os.PathLike, self_contained: bool = False, root: str | os.PathLike | None = None
    ) -> Path:
        """Write only ``compare.html`` into ``out`` (what ``funnel-tl report`` redraws).

        Args:
            out: the sweep's folder.
            self_contained: embed plotly.js in the page instead of loading a shared copy.
            root: the top of an output tree whose ``plotly.min.js`` the page shares; default ``out``.

        Returns:
            The page's path.
        """
        # Imported on use: keeps plotly out of importing this module.
        from funnel_tl.plots.compare_page import render_html
        from funnel_tl.plots.pages import write_page

        return write_page(
            Path(out) / "compare.html", lambda plotlyjs: render_html(self, plotlyjs=plotlyjs), self_contained, root
        )

    @classmethod
    def load(cls, out: str | os.PathLike, loaded: dict[Path, GainResult] | None = None) -> Comparison:
        """Read a sweep back from ``out/compare.json`` and the results files beside it.

        Args:
            out: the sweep's folder.
            loaded: results already read, by resolved path of their results.json, not read again.

        Returns:
            The ``Comparison``, every ok row with its ``GainResult``.
        """
        out = Path(out)
        loaded = loaded or {}
        data = read_compare_json(out / "compare.json")
        rows = tuple(ComparisonRow.from_dict(row) for row in data["models"])
        paths = {row.model: (out / row.slug / "results.json").resolve() for row in rows if row.ok}
        results = {model: loaded.get(path) or GainResult.load(path) for model, path in paths.items()}
        settings: dict[str, Any] = {
            key: data[key]
            for key in (
                "definition",
                "n_prompts",
                "prompts_sha256",
                "drop_first",
                "dtype",
                "device",
                "batch_size",
                "bootstrap",
                "bootstrap_seed",
                "by_position",
                "max_tokens_per_prompt",
                "world_size",
            )
            if key in data
        }
        return cls(rows=rows, results=results, settings=settings, out=out)
