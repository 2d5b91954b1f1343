"""compare.html's verdict table: every column, status included, visible without scrolling sideways;
and the sweep's tidy table.

The layout check renders the page in headless Chromium (skipped where there is none) at the
widths a researcher reads it at, and measures whether the table's box scrolls.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from synthetic_results import from_gains

from funnel_tl.plots.compare_page import table_html
from funnel_tl.sweep.comparison import Comparison
from funnel_tl.sweep.plan import Target
from funnel_tl.sweep.rows import ComparisonRow, row_from_results

CHROMIUM = next(
    (
        path
        for path in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome"))
        if path
    ),
    None,
)


def wide_result(label: str, n_layers: int, seed: int):
    """Gains with two- and three-digit maxima, as trained checkpoints have (nano-4l's combined
    gain reaches 120): the widest cells the table draws."""
    rng = np.random.default_rng(seed)
    ranges = {"attn": (0.01, 6.0), "mlp": (0.05, 25.0), "block": (0.5, 150.0)}
    return from_gains({c: rng.uniform(*ranges[c], (4, n_layers)) for c in ranges}, model=label)


LONG_ERROR = (
    "out of GPU memory: use --dtype float16, a smaller --batch-size, or a larger GPU; "
    "the weights alone need 22.1 GiB of the 23.6 GiB this device has free after the last model"
)


def sweep(labels, steps=None, resumed_index=None, failed_index=None) -> Comparison:
    rows, results = [], {}
    for index, label in enumerate(labels):
        if index == failed_index:
            rows.append(ComparisonRow(model=label, slug=label, status="failed", error=LONG_ERROR))
            continue
        result = wide_result(label, n_layers=36, seed=index)
        step = None if steps is None else steps[index]
        target = Target(label, label, label.partition("@")[0], None, step)
        data = {
            "provenance": {
                "n_parameters": 11_846_072_320,
                "seconds": 1234.5,
                "load_seconds": 98.7,
                "measure_seconds": 1135.8,
                "peak_memory_bytes": 23 * 2**30,
                "memory_kind": "cuda_max_allocated",
            }
        }
        rows.append(row_from_results(target, data, result, resumed=index == resumed_index))
        results[label] = result
    return Comparison(rows=rows, results=results, settings={"definition": "seed", "n_prompts": 4})


PYTHIA = [f"EleutherAI/pythia-{size}-deduped" for size in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")]
CHECKPOINTS = [f"/scratch/someone/training-runs/pythia-1.4b-deduped@step{step}" for step in (0, 512, 1000, 143000)]


def test_table_shows_status_beside_the_name_and_tooltips_every_header():
    table = table_html(sweep(CHECKPOINTS, steps=[0, 512, 1000, 143000], resumed_index=1, failed_index=3))
    header = re.search(r"<thead>(.*)</thead>", table).group(1)
    names = re.findall(r"<th[^>]*>([^<]*)</th>", header)
    assert names[0] == "model" and "status" not in names  # status is said beside the name, not in a last column
    assert len(re.findall(r'<th title="[^"]+">', header)) == len(names)  # each short header says itself in full
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table.split("<tbody>")[1])
    assert len(rows) == 4
    # The cell shows the short label and keeps the full one in its tooltip.
    assert 'title="/scratch/someone/training-runs/pythia-1.4b-deduped@step0"' in rows[0]
    assert "><span>pythia-1.4b-deduped</span><wbr><span>@step0</span></td>" in rows[0]
    assert "earlier run" not in rows[0] and "earlier run</span></td>" in rows[1]
    assert f'colspan="{len(names) - 1}">failed: {LONG_ERROR}</td>' in rows[3]  # the error right after the name
    assert all(len(re.findall(r"<td", row)) == len(names) for row in rows[:3])


def page_overflow(page: Path, width: int) -> int:
    """How many pixels the verdict table's box scrolls sideways at a window ``width`` pixels wide."""
    probe = page.with_name("probe.html")
    probe.write_text(
        page.read_text().replace(
            "</body>",
            "<script>document.querySelectorAll('details').forEach(d => d.open = true);"  # folded tables
            "const box = document.querySelector('.scroll');"
            "document.body.dataset.overflow = box.scrollWidth - box.clientWidth;</script></body>",
        )
    )
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--window-size={width},1200",
                "--virtual-time-budget=3000",
                "--dump-dom",
                probe.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    found = re.search(r'data-overflow="(-?\d+)"', dom)
    assert found, "Chromium did not run the probe"
    return int(found.group(1))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium to lay the page out")
@pytest.mark.parametrize("width", [1400, 1000])
@pytest.mark.parametrize(
    "labels,steps", [(PYTHIA, None), (CHECKPOINTS, [0, 512, 1000, 143000])], ids=["pythia-suite", "local-checkpoints"]
)
def test_table_fits_without_scrolling_sideways(tmp_path, labels, steps, width):
    page = sweep(labels, steps, resumed_index=2, failed_index=1).save_html(tmp_path)
    assert page_overflow(page, width) <= 0


def test_sweep_to_pandas_gives_steps_as_nullable_integers():
    pytest.importorskip("pandas")
    table = sweep(["plain/model", "run@step0", "run@step1000"], steps=[None, 0, 1000]).to_pandas()
    assert str(table["step"].dtype) == "Int64"  # integers, not floats with NaN
    assert table.loc[table.model == "plain/model", "step"].isna().all()
    assert sorted(set(table.loc[table.model != "plain/model", "step"].tolist())) == [0, 1000]
