"""What the commands write and print: pages, images, the "Saved:" lines, one line per failure.

Shared by the measuring commands (``funnel_tl.cli.commands``) and ``report``
(``funnel_tl.cli.report``), which redraws what they wrote.
"""

from __future__ import annotations

from pathlib import Path

from funnel_tl.errors import FunnelError, one_line
from funnel_tl.results.folders import describe_os_error, save_elsewhere

# Heads that `heads` prints and heads.html tabulates unless --top says otherwise.
TOP_HEADS = 20

IMAGES_HINT = "Figures as PNG, SVG and PDF beside the pages: add --png"


def check_png(args) -> None:
    """--png needs kaleido and Chrome: refused in one line before anything is loaded or measured."""
    if getattr(args, "png", False):
        # Imported on use: keeps plotly and torch out of `funnel-tl --help`.
        from funnel_tl.plots.pages import require_images

        require_images()


def print_positions(result) -> None:
    """After the seed's analysis, when positions were kept: does the verdict hang on the first ones?"""
    if result.positions is not None:
        # Imported on use: keeps einops and numpy out of `funnel-tl --help`.
        from funnel_tl.analysis.sink import format_sink_analysis

        print(format_sink_analysis(result))


def save_files(out: Path, writers, rescue=None, report_hint: bool = False) -> tuple[list[str], FunnelError | None]:
    """Run ``writers`` (file name, write(path) -> path or lines) in order; stop at the first failure.

    Returns the "Saved:" lines and, if a write failed, a FunnelError naming what was saved, what
    was not and why. When the first file (the numbers) cannot be written, ``rescue(path)`` saves it
    to a fresh temporary folder instead, so a measurement is never lost to a full or read-only disk.
    """
    lines: list[str] = []
    for index, (name, write) in enumerate(writers):
        try:
            written = write(out / name)
        except Exception as error:
            if index == 0 and not isinstance(error, OSError):
                raise  # not the disk: the same data would fail anywhere (a bug, for the catch-all)
            why = describe_os_error(error) if isinstance(error, OSError) else unexpected(error)
            if index == 0:
                place = save_elsewhere(rescue, name) if rescue else None
                saved = f"saved to {place} instead" if place else "nothing could be saved"
                return lines, FunnelError(
                    f"measured, but {out / name} could not be written ({why}); {saved}: "
                    "free space or fix the folder's permissions"
                )
            done = ", ".join(line.split()[-1] for line in lines)
            hint = f"; `funnel-tl report {out}` redraws it" if report_hint else ""
            return lines, FunnelError(
                f"saved {done}, but {out / name} could not be written ({why}): free space or "
                f"fix the folder's permissions{hint}"
            )
        lines.extend(written if isinstance(written, list) else [f"Saved: {written}"])
    return lines, None


def render(
    result, folder: Path, say=None, self_contained: bool = False, root: Path | None = None, images: bool = False
) -> list[str]:
    """Write folder/funnel.html (and positions.html when positions were kept); with ``images``
    (--png) every figure of them as PNG, SVG and PDF too.

    With ``say`` (report): each "Saved:" line goes to it; without, the lines are returned (run
    prints them after every file is written). Pages load a shared plotly.min.js from ``root``
    (default: their folder) unless ``self_contained``.
    """
    # Imported on use: keeps plotly and torch out of `funnel-tl --help`.
    from funnel_tl.plots.pages import export_figures, write_html
    from funnel_tl.plots.panels import plot_funnel

    figures = {"funnel": plot_funnel(result)}
    lines = [
        f"Saved: {write_html(figures['funnel'], folder / 'funnel.html', self_contained=self_contained, root=root)}"
    ]
    if result.positions is not None:
        # Imported on use: keeps plotly and torch out of `funnel-tl --help`.
        from funnel_tl.plots.positions import position_figures, write_position_page

        page = write_position_page(result, folder / "positions.html", self_contained=self_contained, root=root)
        lines.append(f"Saved: {page}")
        figures |= position_figures(result)
    if images:
        lines.append(images_line(export_figures(figures, folder)))
    for line in lines if say is not None else ():
        say(line)
    return lines


def images_line(paths) -> str:
    """One "Saved:" line for the images of a page: folder/{funnel,positions-heatmaps}.{png,svg,pdf}."""
    paths = list(paths)
    if not paths:
        return "Saved: no figures"
    names = sorted({path.stem for path in paths}, key=[path.stem for path in paths].index)
    kinds = sorted({path.suffix.lstrip(".") for path in paths}, key=[path.suffix.lstrip(".") for path in paths].index)
    return f"Saved: {paths[0].parent}/{{{','.join(names)}}}.{{{','.join(kinds)}}}"


def head_images(result, k: int, folder: Path) -> str:
    """heads.html's figures as images (--png)."""
    # Imported on use: keeps plotly and torch out of `funnel-tl --help`.
    from funnel_tl.plots.heads import head_figures
    from funnel_tl.plots.pages import export_figures

    return images_line(export_figures(head_figures(result, k), folder))


def compare_images(comparison) -> str:
    """compare.html's figures as images (--png), beside it."""
    # Imported on use: keeps plotly and torch out of `funnel-tl --help`.
    from funnel_tl.plots.compare_page import page_figures
    from funnel_tl.plots.pages import export_figures

    return images_line(export_figures(page_figures(comparison), comparison.out))


def effects_images(result, folder: Path) -> str:
    """effects.html's figure as images (--png), beside it."""
    # Imported on use: keeps plotly and torch out of `funnel-tl --help`.
    from funnel_tl.plots.effects import plot_effects
    from funnel_tl.plots.pages import export_figures

    return images_line(export_figures({"effects": plot_effects(result)}, folder))


def unexpected(error: Exception) -> str:
    """One line for an exception no check anticipated."""
    if isinstance(error, MemoryError):
        return "out of memory: use fewer prompts, a smaller --batch-size or --bootstrap, or a smaller model"
    if isinstance(error, OSError) and error.filename:
        return f"cannot use {error.filename}: {describe_os_error(error)}"
    return one_line(error)
