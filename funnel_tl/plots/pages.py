"""Figures written: offline HTML pages (one shared plotly.min.js) and PNG/SVG/PDF through kaleido."""

from __future__ import annotations

import html
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from funnel_tl.errors import FunnelError
from funnel_tl.plots.style import HEIGHT, WIDTH
from funnel_tl.results.files import write_text_atomic
from funnel_tl.results.folders import temporary_beside

PNG_HELP = (
    "PNG skipped: it needs kaleido and Chrome/Chromium (pip install kaleido; apt-get install chromium), "
    "or open the HTML and use the camera icon"
)


# ---- output -----------------------------------------------------------------------------------
# Pages of one output tree load one copy of plotly.js written beside them (4.8 MB once, not per
# page); a page opened from disk reads it by relative path, so it still works offline.
PLOTLYJS = "plotly.min.js"


def plotlyjs_for(
    page: str | os.PathLike, self_contained: bool = False, root: str | os.PathLike | None = None
) -> str | bool:
    """What a page at ``page`` should load plotly.js from: True (embed it) or a relative path.

    Unless ``self_contained``, ``root/plotly.min.js`` (``root`` defaults to the page's folder;
    ``compare`` and ``report`` pass the top of their output tree) is written when missing or
    from another plotly version, and its path relative to the page's folder returned.
    """
    if self_contained:
        return True
    page = Path(page)
    root = Path(root) if root is not None else page.parent
    shared = root / PLOTLYJS
    text = get_plotlyjs()
    if not shared.is_file() or shared.stat().st_size != len(text.encode("utf-8")):
        write_text_atomic(shared, text)
    page.parent.mkdir(parents=True, exist_ok=True)
    return Path(os.path.relpath(shared.resolve(), page.parent.resolve())).as_posix()


def script_tag(plotlyjs: str | bool) -> str:
    """The <script> that gives a page plotly.js: embedded (True) or by relative path (a string)."""
    if plotlyjs is True:
        return f'<script type="text/javascript">{get_plotlyjs()}</script>\n'
    return f'<script src="{html.escape(str(plotlyjs), quote=False)}" charset="utf-8"></script>\n'


def figure_div(fig: go.Figure, div_id: str | None = None, config: dict | None = None) -> str:
    """One figure as a <div> for a page whose <head> already loads plotly.js (``script_tag``)."""
    return fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True, **(config or {})},
    )


def page_html(title: str, body: str, plotlyjs: str | bool, style: str = "", body_style: str = "") -> str:
    """A whole page of funnel_tl's: plotly.js as ``script_tag(plotlyjs)`` gives it, ``title``
    (plain text, escaped here) and ``style`` (CSS) in its head, ``body`` (HTML, as it is) and
    ``body_style`` (the body tag's CSS) in its body."""
    css = f"<style>{style}</style>\n" if style else ""
    body_tag = f'<body style="{body_style}">' if body_style else "<body>"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title, quote=False)}</title>\n{script_tag(plotlyjs)}{css}</head>\n"
        f"{body_tag}\n{body}\n</body>\n</html>\n"
    )


def write_page(
    path: str | os.PathLike,
    render: Callable[[str | bool], str],
    self_contained: bool = False,
    root: str | os.PathLike | None = None,
) -> Path:
    """Write the page ``render(plotlyjs)`` gives to ``path`` atomically, ``plotlyjs`` from
    ``plotlyjs_for``: a shared ``plotly.min.js`` beside it (or at ``root``), or embedded."""
    path = Path(path)
    return write_text_atomic(path, render(plotlyjs_for(path, self_contained, root)))


def write_html(
    fig: go.Figure,
    path: str | os.PathLike,
    title: str | None = None,
    self_contained: bool = False,
    root: str | os.PathLike | None = None,
) -> Path:
    """Write ``fig`` as an HTML page that opens with no network.

    Written to a temporary file beside ``path`` and renamed into place, so a reader never sees a
    half-written file. The div id is fixed, so the same figure always gives the same bytes. The
    page's camera icon saves a PNG of ``WIDTH`` × ``HEIGHT`` (1400 × 1000) pixels at scale 2,
    named after the page.

    Args:
        fig: The figure, e.g. from ``plot_funnel``.
        path: The page to write (``.html``); its folder is made when missing.
        title: The page's ``<title>`` (plain text); ``None`` takes the first line of the
            figure's title without its ``<b>`` tags, or ``"funnel_tl figure"`` where it has none.
        self_contained: ``False`` (the default) loads ``plotly.min.js`` by relative path from
            the page's folder (or from ``root``), written there once and shared by every page;
            ``True`` embeds plotly.js in the page instead (one standalone 4.8 MB file).
        root: The folder that holds the shared ``plotly.min.js``, the top of an output tree;
            ``None`` is the page's own folder. Ignored when ``self_contained``.

    Returns:
        ``path``, as a ``Path``.
    """
    path = Path(path)
    title = title or (fig.layout.title.text or "funnel_tl figure").split("<br>")[0].replace("<b>", "").replace(
        "</b>", ""
    )
    config = {
        "toImageButtonOptions": {"format": "png", "filename": path.stem, "width": WIDTH, "height": HEIGHT, "scale": 2}
    }
    body = figure_div(fig, "funnel-tl-figure", config)
    return write_page(path, lambda plotlyjs: page_html(title, body, plotlyjs), self_contained, root)


def find_chrome() -> str | None:
    """A Chrome/Chromium executable kaleido can drive: ``$BROWSER_PATH``, else one on PATH."""
    explicit = os.environ.get("BROWSER_PATH")
    if explicit and Path(explicit).is_file():
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def png_missing() -> str | None:
    """Why ``write_png`` cannot work here (one line saying what to install), or None when it can."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return "kaleido is not installed (pip install kaleido, or pip install 'funnel_tl[png]')"
    if find_chrome() is None:
        return "kaleido found no Chrome/Chromium (apt-get install chromium, or set BROWSER_PATH to a Chrome executable)"
    return None


def png_help() -> str:
    """The line the CLI prints when it wrote no PNG: the reason, and the way round it."""
    reason = png_missing()
    return f"PNG skipped: {reason}; or open the HTML and use the camera icon" if reason else ""


def png_available() -> bool:
    """Whether ``write_png`` can work here: kaleido importable and a Chrome/Chromium found."""
    return png_missing() is None


# What ``--png`` writes of every figure: raster for slides, vector for papers (kaleido can all three).
IMAGE_FORMATS = ("png", "svg", "pdf")


def require_images() -> None:
    """Refuse ``--png`` in one line, before any work, where kaleido or Chrome is missing."""
    reason = png_missing()
    if reason is not None:
        raise FunnelError(f"--png needs kaleido and a Chrome/Chromium: {reason}")


def write_images(figures: dict, scale: float = 2) -> list[Path] | None:
    """Write each figure of ``{path: figure}`` as its path's suffix says (.png, .svg, .pdf, .jpeg,
    .webp) through kaleido, in one browser session, each file atomically; the paths written, or
    ``None`` with a ``UserWarning`` saying why when kaleido or Chrome is missing.

    A figure is drawn at its own layout's width and height (``WIDTH`` × ``HEIGHT`` where it sets
    none); ``scale`` multiplies the pixels of raster formats only. MathJax is off: kaleido would
    fetch it from a CDN, and no title here needs it.
    """
    reason = png_missing()
    if reason is not None:
        warnings.warn(
            f"no image written to {', '.join(str(path) for path in figures)}: {reason}", UserWarning, stacklevel=2
        )
        return None
    # Imported on use: kaleido is optional (the [png] extra), needed by --png only.
    import kaleido

    chrome = find_chrome()
    assert chrome is not None  # png_missing() said None: there is a Chrome
    os.environ.setdefault("BROWSER_PATH", chrome)  # choreographer (kaleido's browser driver) reads it
    specs: list[dict] = []
    moves: list[tuple[Path, Path]] = []  # (temporary file, final path)
    for name, fig in figures.items():
        path = Path(name)
        kind = path.suffix.lower().lstrip(".")
        if kind not in ("png", "svg", "pdf", "jpeg", "jpg", "webp"):
            raise FunnelError(f"cannot write a figure as {path.name}: give a .png, .svg, .pdf, .jpeg or .webp path")
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = temporary_beside(path)  # remove_temporaries finds it if this process is killed
        os.close(descriptor)
        raster = kind in ("png", "jpeg", "jpg", "webp")
        specs.append(
            dict(
                fig=fig.to_dict(),
                path=Path(temporary),
                opts=dict(
                    format="jpeg" if kind == "jpg" else kind,
                    width=fig.layout.width or WIDTH,
                    height=fig.layout.height or HEIGHT,
                    scale=scale if raster else 1,
                ),
            )
        )
        moves.append((Path(temporary), path))
    try:
        kaleido.write_fig_from_object_sync(specs, kopts={"mathjax": False})
        for staged, path in moves:
            os.chmod(staged, 0o644)
            os.replace(staged, path)
    finally:
        for staged, _ in moves:
            staged.unlink(missing_ok=True)
    return [path for _, path in moves]


def write_image(
    fig: go.Figure, path: str | os.PathLike, width: int | None = None, height: int | None = None, scale: float = 2
) -> Path | None:
    """Write ``fig`` as an image, the format by ``path``'s suffix (.png, .svg, .pdf), atomically;
    ``None`` with a ``UserWarning`` saying why when kaleido or Chrome is missing (``png_missing``).

    Args:
        fig: The figure, e.g. from ``plot_funnel``; left unchanged (where ``width`` or
            ``height`` is given, a resized copy is drawn).
        path: The file to write: ``.png``, ``.svg`` or ``.pdf`` (``.jpeg`` and ``.webp`` too);
            any other suffix is a ``FunnelError``. Its folder is made when missing.
        width: The image's width in CSS pixels; ``None`` takes the figure's own, ``WIDTH`` (1400)
            where it sets none.
        height: The image's height in CSS pixels; ``None`` takes the figure's own, ``HEIGHT``
            (1000) where it sets none.
        scale: Multiplies the pixels of a raster image (PNG: 2 gives 2800 × 2000 for
            1400 × 1000); vector formats ignore it.

    Returns:
        ``path`` as a ``Path``, or ``None`` when nothing was written (kaleido or Chrome missing).

    >>> write_image(plot_funnel(result), "runs/demo/funnel.svg")  # doctest: +SKIP
    PosixPath('runs/demo/funnel.svg')
    """
    reason = png_missing()
    if reason is not None:
        warnings.warn(f"no image written to {path}: {reason}", UserWarning, stacklevel=2)
        return None
    if width is not None or height is not None:
        fig = go.Figure(fig).update_layout(
            width=width or fig.layout.width or WIDTH, height=height or fig.layout.height or HEIGHT
        )
    written = write_images({path: fig}, scale=scale)
    assert written is not None  # png_missing() said None above
    return written[0]


def write_png(
    fig: go.Figure, path: str | os.PathLike, width: int = WIDTH, height: int = HEIGHT, scale: float = 2
) -> Path | None:
    """Write ``fig`` as a PNG through kaleido, atomically; ``None`` when kaleido or Chrome is missing.

    When it writes nothing it says why in a ``UserWarning`` (``png_missing()`` gives the same
    line), so a notebook user sees what to install instead of a silent None.

    Args:
        fig: The figure, e.g. from ``plot_funnel``; left unchanged (a resized copy is drawn).
        path: The file to write, ``.png`` (the suffix picks the format, as in ``write_image``);
            its folder is made when missing.
        width: The image's width in CSS pixels (default ``WIDTH``, 1400).
        height: The image's height in CSS pixels (default ``HEIGHT``, 1000).
        scale: Multiplies the pixels: the default 2 writes 2800 × 2000 for 1400 × 1000.

    Returns:
        ``path`` as a ``Path``, or ``None`` when nothing was written (kaleido or Chrome missing).
    """
    if png_missing() is not None:
        warnings.warn(f"no PNG written to {path}: {png_missing()}", UserWarning, stacklevel=2)
        return None
    return write_image(fig, path, width=width, height=height, scale=scale)


def export_figures(
    figures: dict[str, go.Figure], folder: str | os.PathLike, formats: tuple[str, ...] = IMAGE_FORMATS
) -> list[Path]:
    """Every figure of a page (``{name: figure}``) as folder/NAME.png, .svg and .pdf (``--png``).

    Raises ``FunnelError`` where kaleido or Chrome is missing (``--png`` asked for them).
    """
    require_images()
    written = write_images({Path(folder) / f"{name}.{kind}": fig for name, fig in figures.items() for kind in formats})
    assert written is not None  # require_images() raised where images cannot be written
    return written
