"""Sweeps at the scale of the Pythia suite: many checkpoints, several sizes, one readable page.

What is checked: a model is known by its identity, not by how its path is typed; a run into a
sweep folder adds to its table and never drops a row (a table of other settings is refused);
a results file is resumed only when every setting that changes a number matches; steps are in
numeric order everywhere; the per-checkpoint work outside loading and measuring is bounded
(compare.json rewrites, a garbage collection that visits only the last model's objects); and the
page's figures are laid out for checkpoints and grow linearly with the rows (the number of traces
and shapes is bounded; benchmarks/bench_sweep.py times it). Numbers are those of single runs,
as tests/test_compare.py proves for every sweep; here the reference for a resumed number is the
first run's file, byte for byte.
"""

from __future__ import annotations

import gc
import importlib
import json
import re
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest

from funnel_tl import FunnelError, GainResult
from funnel_tl.cli.entry import main
from funnel_tl.components import COMPONENTS
from funnel_tl.plots.compare_page import render_html
from funnel_tl.plots.sweep_style import OVERLAY_LINES, thinned
from funnel_tl.prompts.sets import prompts_sha256
from funnel_tl.results.folders import slug
from funnel_tl.sweep.comparison import Comparison
from funnel_tl.sweep.plan import PYTHIA_STEPS, Target
from funnel_tl.sweep.rows import ComparisonRow, row_from_results
from funnel_tl.testing.toy import build_training_run

sweep_package = importlib.import_module("funnel_tl.sweep")
sweep_comparison = importlib.import_module("funnel_tl.sweep.comparison")
sweep_rows = importlib.import_module("funnel_tl.sweep.rows")
sweep_one_target = importlib.import_module("funnel_tl.sweep.one_target")
sweep_plan = importlib.import_module("funnel_tl.sweep.plan")
compare = sweep_package.compare
OPTIONS = dict(device="cpu", dtype="float32", batch_size=8, progress=False, bootstrap=0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer):
    """A local training run under Pythia-like step names whose string order is not their order."""
    root = tmp_path_factory.mktemp("training") / "ckpts"
    build_training_run(root, [0, 2, 1000, 10000], tokenizer=tokenizer, n_layers=2, d_model=32)
    return root


@pytest.fixture(scope="module")
def swept(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("swept")
    comparison = compare([str(run_dir)], checkpoints="all", out=out, **OPTIONS)
    return comparison, out


def copy_of(swept, tmp_path) -> Path:
    _, out = swept
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    return copy


# ---- identity, not spelling ----------------------------------------------------------------------
def test_a_rerun_spelled_differently_measures_nothing(swept, run_dir, tmp_path, load_calls, monkeypatch):
    comparison, _ = swept
    copy = copy_of(swept, tmp_path)
    before = {p: p.read_bytes() for p in copy.glob("*/results.json")}
    monkeypatch.chdir(run_dir.parent)
    for spelling in ("ckpts", "ckpts/", "./ckpts", str(run_dir), f"../{run_dir.parent.name}/ckpts"):
        again = compare([spelling], checkpoints="all", out=copy, **OPTIONS)
        assert load_calls == [], spelling
        assert [row.model for row in again.rows] == [row.model for row in comparison.rows]
        assert all(row.resumed for row in again.rows)
    assert {p: p.read_bytes() for p in copy.glob("*/results.json")} == before
    # Folders are named from the resolved path: never hidden, never from "./".
    names = sorted(p.name for p in copy.iterdir() if p.is_dir())
    assert len(names) == 4 and not any(name.startswith(".") for name in names), names


def test_a_table_of_typed_spellings_is_superseded_not_duplicated(swept, run_dir, tmp_path, monkeypatch):
    """A table written before models were known by identity holds `ckpts@step0`: a rerun from the
    same folder names that model `/abs/ckpts@step0` and its row replaces the old one."""
    copy = copy_of(swept, tmp_path)
    table = json.loads((copy / "compare.json").read_text())
    for row in table["models"]:  # the labels and folders an earlier funnel_tl gave `compare --models ckpts`
        old_label = row["model"].replace(str(run_dir), "ckpts")
        old_slug = slug(old_label)
        (copy / row["slug"]).rename(copy / old_slug)
        data = json.loads((copy / old_slug / "results.json").read_text())
        (copy / old_slug / "results.json").write_text(json.dumps({**data, "model": old_label}))
        row.update(model=old_label, base="ckpts", slug=old_slug)
    (copy / "compare.json").write_text(json.dumps(table))
    monkeypatch.chdir(run_dir.parent)
    again = compare(["ckpts"], checkpoints=[0], out=copy, **OPTIONS)
    assert [row.model for row in again.rows] == [f"{run_dir}@step0"] + [
        f"ckpts@step{step}" for step in (2, 1000, 10000)
    ]  # one row per checkpoint, none twice
    assert [row.status for row in again.rows] == ["ok"] * 4 and [row.resumed for row in again.rows] == [
        False,
        True,
        True,
        True,
    ]


def test_model_names_are_identities():
    identity = sweep_plan.model_identity
    assert identity("EleutherAI/pythia-70m/") == identity("EleutherAI/pythia-70m") == "EleutherAI/pythia-70m"
    assert identity("nano-4l") == "nano-4l"
    plan = sweep_plan.plan_targets(["EleutherAI/pythia-70m/"], checkpoints=[0])
    assert [t.label for t in plan] == ["EleutherAI/pythia-70m@step0"]


def test_models_may_be_comma_separated_and_pythia_named_short():
    expand = sweep_plan.expand_models
    assert expand(["pythia-70m,pythia-160m", "nano-2l"]) == [
        "EleutherAI/pythia-70m",
        "EleutherAI/pythia-160m",
        "nano-2l",
    ]
    assert expand("pythia-1.4b-deduped") == ["EleutherAI/pythia-1.4b-deduped"]
    with pytest.raises(FunnelError, match="empty model name"):
        expand("pythia-70m,,pythia-160m")
    plan = sweep_plan.plan_targets("pythia-70m,pythia-160m", checkpoints="all")
    assert len(plan) == 2 * len(PYTHIA_STEPS)
    assert [t.base for t in plan[:: len(PYTHIA_STEPS)]] == ["EleutherAI/pythia-70m", "EleutherAI/pythia-160m"]
    assert {t.revision for t in plan[:3]} == {"step0", "step1", "step2"}


# ---- a run into a sweep folder adds rows, never drops them ---------------------------------------
def test_one_checkpoint_into_the_folder_keeps_every_row(swept, tmp_path, load_calls, capsys):
    comparison, _ = swept
    copy = copy_of(swept, tmp_path)
    capsys.readouterr()
    again = compare([str(swept[0].rows[0].base)], checkpoints=[1000], out=copy, force=True, **OPTIONS)
    assert [Path(source).name for source, _ in load_calls] == ["step1000"]  # only the one named
    assert [row.step for row in again.rows] == [0, 2, 1000, 10000]  # all kept, in numeric order
    assert [row.resumed for row in again.rows] == [True, True, False, True]
    table = json.loads((copy / "compare.json").read_text())
    assert table["n_models"] == 4 and [row["step"] for row in table["models"]] == [0, 2, 1000, 10000]
    assert "kept 3 rows of the table" in capsys.readouterr().err
    for old, new in zip(comparison.rows, again.rows, strict=False):  # every kept row carries the first run's numbers
        np.testing.assert_array_equal(
            again.results[new.model].out_sums["mlp"], comparison.results[old.model].out_sums["mlp"]
        )


def test_a_kept_row_whose_file_is_gone_stays_and_says_so(swept, tmp_path, load_calls):
    copy = copy_of(swept, tmp_path)
    rows = swept[0].rows
    (copy / rows[1].slug / "results.json").unlink()
    again = compare([str(rows[0].base)], checkpoints=[0], out=copy, **OPTIONS)
    assert load_calls == []
    assert [row.status for row in again.rows] == ["ok", "failed", "ok", "ok"]
    assert "is gone or no longer matches this table" in again.rows[1].error


@pytest.mark.parametrize(
    "change,named",
    [
        (dict(definition="residual"), "definition=seed"),
        (dict(drop_first=1), "drop_first=0"),
        (dict(max_tokens_per_prompt=5), "max_tokens_per_prompt=None"),
        (dict(prompts=["one prompt here", "and a second one"]), "prompts_sha256="),
    ],
)
def test_a_table_of_other_settings_is_refused_before_any_model_loads(swept, tmp_path, load_calls, change, named):
    copy = copy_of(swept, tmp_path)
    before = (copy / "compare.json").read_bytes()
    with pytest.raises(FunnelError) as refused:
        compare([str(swept[0].rows[0].base)], checkpoints=[0], out=copy, **{**OPTIONS, **change})
    message = str(refused.value)
    assert "\n" not in message and named in message and "give another --out" in message
    assert load_calls == [] and (copy / "compare.json").read_bytes() == before


def test_the_cli_refuses_a_table_of_other_settings_in_one_line(swept, tmp_path, capsys):
    copy = copy_of(swept, tmp_path)
    status = main(
        [
            "compare",
            "--models",
            str(swept[0].rows[0].base),
            "--checkpoints",
            "0",
            "--device",
            "cpu",
            "--definition",
            "residual",
            "--bootstrap",
            "0",
            "--out",
            str(copy),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "definition=seed" in err[0] and "definition=residual" in err[0]


# ---- a results file is resumed only when every number-changing setting matches (issue 21) ----------
def test_a_run_with_truncation_in_the_sweep_folder_is_measured_again(tmp_path, capsys):
    """`run --max-tokens-per-prompt` wrote its file where the sweep keeps that checkpoint: the
    sweep, asking no truncation, measures it again and says why (it used to show it as its own)."""
    out = tmp_path / "sweep"
    sweep = [
        "compare",
        "--models",
        "nano-4l",
        "--checkpoints",
        "64",
        "--device",
        "cpu",
        "--bootstrap",
        "0",
        "--out",
        str(out),
    ]
    assert main(sweep) == 0
    folder = out / "nano-4l_step64"
    untruncated = GainResult.load(folder / "results.json")
    assert (
        main(
            [
                "run",
                "--model",
                "nano-4l",
                "--revision",
                "step64",
                "--device",
                "cpu",
                "--bootstrap",
                "0",
                "--max-tokens-per-prompt",
                "4",
                "--out",
                str(folder),
            ]
        )
        == 0
    )
    assert GainResult.load(folder / "results.json").provenance["truncation"]["max_tokens_per_prompt"] == 4
    capsys.readouterr()
    assert main(sweep) == 0
    err = capsys.readouterr().err
    assert "max_tokens_per_prompt=4; this sweep asks max_tokens_per_prompt=None" in err, err
    again = GainResult.load(folder / "results.json")
    assert "truncation" not in again.provenance
    np.testing.assert_allclose(again.out_sums["mlp"], untruncated.out_sums["mlp"], rtol=1e-6)  # float32 rerun


def test_a_results_file_of_another_revision_is_not_resumed(tmp_path, capsys):
    """A hub model's results name no revision in their model name: a file measured at step1000
    where the sweep keeps the final model must not stand for it."""
    from synthetic_results import funnel_like

    result = funnel_like(n_layers=4, model="EleutherAI/pythia-70m")
    result.provenance.update({"dtype": "float32", "revision": "step1000"})
    path = tmp_path / "EleutherAI__pythia-70m" / "results.json"
    result.save(path)
    target = Target("EleutherAI/pythia-70m", "EleutherAI/pythia-70m", "EleutherAI/pythia-70m")
    settings = dict(
        definition="seed", prompts_sha256=prompts_sha256(list(result.prompts)), drop_first=0, dtype="float32"
    )
    assert sweep_one_target.finished_result(path, target, settings, say_replaced=True) is None
    assert "revision=step1000; this sweep asks revision=None" in capsys.readouterr().err
    result.provenance["revision"] = None
    result.save(path)
    assert sweep_one_target.finished_result(path, target, settings) is not None  # the same settings: resumed


# ---- the per-checkpoint overhead -----------------------------------------------------------------
def test_each_model_is_freed_before_the_next_loads(run_dir, tmp_path, monkeypatch):
    """The collection after each model (cheap now: it visits only what came after the last one)
    still frees the model before the next load, and the sweep leaves nothing frozen behind."""
    alive = []
    real = sweep_one_target.load_model

    def tracking(source, **kwargs):
        alive.append([ref() is not None for ref in refs])  # what is still alive when the next one loads
        model = real(source, **kwargs)
        refs.append(weakref.ref(model))
        return model

    refs: list = []
    monkeypatch.setattr(sweep_one_target, "load_model", tracking)
    frozen = gc.get_freeze_count()
    compare([str(run_dir)], checkpoints="all", out=tmp_path, **OPTIONS)
    assert alive == [[], [False], [False, False], [False, False, False]]
    assert gc.get_freeze_count() == frozen


def test_compare_json_is_rewritten_when_due_not_after_every_row(run_dir, tmp_path, monkeypatch):
    writes = []
    real = sweep_rows.write_json_atomic

    def counting(path, data):
        if Path(path).name == "compare.json":
            writes.append(data["n_models"])
        return real(path, data)

    monkeypatch.setattr(sweep_rows, "write_json_atomic", counting)  # the table as the sweep goes
    monkeypatch.setattr(sweep_comparison, "write_json_atomic", counting)  # the table at the end
    monkeypatch.setattr(sweep_rows, "TABLE_WRITE_SECONDS", 1e9)
    compare([str(run_dir)], checkpoints="all", out=tmp_path / "slow", **OPTIONS)
    assert writes == [1, 4]  # after the first row (a kill then still leaves a table), and at the end
    writes.clear()
    monkeypatch.setattr(sweep_rows, "TABLE_WRITE_SECONDS", 0.0)
    monkeypatch.setattr(sweep_rows, "TABLE_WRITE_SHARE", 0.0)
    compare([str(run_dir)], checkpoints="all", out=tmp_path / "fast", force=True, **OPTIONS)
    assert writes == [1, 2, 3, 4, 4]


# ---- steps in numeric order everywhere -----------------------------------------------------------
def test_report_lists_checkpoints_in_step_order(swept, tmp_path, capsys):
    copy = copy_of(swept, tmp_path)
    capsys.readouterr()
    assert main(["report", str(copy)]) == 0
    printed = capsys.readouterr().out
    order = [int(step) for step in re.findall(r"From: .*_step(\d+)/results\.json", printed)]
    assert order == [0, 2, 1000, 10000]


def test_rows_are_ordered_by_step_as_numbers():
    rows = [ComparisonRow(f"m@step{s}", f"m_step{s}", "ok", base="m", step=s) for s in (1000, 2, 10000, 0)]
    assert [row.step for row in sweep_rows.ordered_rows(rows)] == [0, 2, 1000, 10000]


# ---- the page ------------------------------------------------------------------------------------
def synthetic(n_steps: int, sizes=("70m",), n_layers: int = 6) -> Comparison:
    """A sweep of ``sizes`` × the first ``n_steps`` of Pythia's steps, from chosen gains (no model)."""
    from synthetic_results import from_gains

    rng = np.random.default_rng(0)
    rows, results = [], {}
    for size in sizes:
        base = f"EleutherAI/pythia-{size}"
        for step in PYTHIA_STEPS[:n_steps]:
            label = f"{base}@step{step}"
            result = from_gains({c: rng.uniform(0.2, 3, (4, n_layers)) for c in COMPONENTS}, model=label)
            rows.append(row_from_results(Target(label, base, base, f"step{step}", step), {}, result, resumed=False))
            results[label] = result
    return Comparison(rows=rows, results=results, settings={"definition": "seed", "n_prompts": 4})


def test_a_long_checkpoint_sweep_draws_a_bounded_overlay_with_the_rest_a_click_away():
    figure = synthetic(154).figure()
    drawn = [trace for trace in figure.data if trace.visible is not False and trace.x[0] is not None]
    hidden = [index for index, trace in enumerate(figure.data) if trace.visible is False]
    assert len(drawn) == 3 * len(thinned(synthetic(154).ok)) and len(drawn) < 3 * OVERLAY_LINES
    assert len(hidden) == 3  # every checkpoint: one trace per panel
    assert list(figure.layout.updatemenus[0].buttons[0].args[1]) == hidden
    # The hidden trace holds every checkpoint's gains, one gap between checkpoints.
    every = figure.data[hidden[1]]  # the MLP panel
    values = [v for v in every.y if v is not None]
    comparison = synthetic(154)
    np.testing.assert_allclose(values, np.concatenate([comparison.results[r.model].mlp_gains for r in comparison.rows]))
    assert not any(trace.showlegend for trace in drawn)  # a colour bar of the step instead of 154 entries
    assert figure.layout.coloraxis.colorbar.ticktext[0] == "0"
    assert len(figure.layout.shapes) == 3  # one neutral line per panel, not one per model and panel
    assert len(synthetic(40).figure().data) == len(figure.data)  # bounded: no growth with the rows


def test_thinning_keeps_first_and_last_and_early_training():
    picked = thinned(synthetic(154).ok)
    steps = [PYTHIA_STEPS[i] for i in picked]
    assert picked[0] == 0 and picked[-1] == 153 and len(picked) <= 14
    assert sum(step < 1000 for step in steps) >= 4  # log-spaced steps: the early ones are not drowned out
    assert thinned(synthetic(OVERLAY_LINES).ok) == list(range(OVERLAY_LINES))  # few: all drawn


def test_a_checkpoint_page_leads_with_gains_against_step_and_folds_its_tables():
    comparison = synthetic(30, sizes=("70m", "160m"))
    page = render_html(comparison, plotlyjs="plotly.min.js")
    training = page.index("Gains against training step")
    assert training < page.index("By depth") < page.index("<h2>Verdicts</h2>")
    assert page.count('<details class="verdicts">') == 2 and "pythia-160m</b>: 30 checkpoints" in page
    figure = comparison.training_figure()
    assert [a.text for a in figure.layout.annotations] == [
        "pythia-70m: Attention gain per layer",
        "pythia-70m: MLP gain per layer",
        "pythia-160m: Attention gain per layer",
        "pythia-160m: MLP gain per layer",
    ]
    assert figure.layout.xaxis.type == "log" and figure.layout.xaxis3.type == "log"
    assert figure.layout.coloraxis.colorbar.title.text == "layer<br>depth"  # several sizes: no per-layer legend
    # Each size's checkpoints, in step order, one line per layer and component.
    lines = [trace for trace in figure.data if trace.x[0] is not None]
    assert len(lines) == 2 * 2 * 6
    assert list(lines[0].customdata[:, 0]) == list(PYTHIA_STEPS[:30])
    # The overlay compares the sizes at their last checkpoint, each named in the legend.
    overlay = comparison.figure()
    shown = [trace.name for trace in overlay.data if trace.visible is not False and trace.showlegend]
    assert shown == [f"pythia-{size} @ step {PYTHIA_STEPS[29]:,}" for size in ("70m", "160m")]


def test_step_heatmaps_have_the_step_on_their_axis_and_a_bounded_height():
    small, large = synthetic(20).heatmap("mlp"), synthetic(154, sizes=("70m", "160m")).heatmap("mlp")
    assert small.layout.height == large.layout.height  # two sizes side by side, not 308 rows tall
    cells = large.data[0]
    steps = [row for row in cells.customdata[:, 0, 0]]
    assert steps == list(PYTHIA_STEPS)
    np.testing.assert_allclose(cells.y[1:], np.log10(PYTHIA_STEPS[1:]))  # log10 of the step, step 0 at 0.5
    assert cells.y[0] == pytest.approx(np.log10(0.5))
    comparison = synthetic(154, sizes=("70m", "160m"))
    np.testing.assert_allclose(
        cells.z, np.log10([comparison.results[r.model].mlp_gains for r in comparison.rows if r.base.endswith("70m")])
    )


def models(names) -> Comparison:
    from synthetic_results import funnel_like

    rows, results = [], {}
    for index, name in enumerate(names):
        result = funnel_like(n_layers=4, model=name, seed=index)
        rows.append(row_from_results(Target(name, name, name), {}, result, resumed=False))
        results[name] = result
    return Comparison(rows=rows, results=results, settings={"definition": "seed", "n_prompts": 8})


def test_a_model_sweep_keeps_its_order_and_legend():
    comparison = models(["a/one", "b/two"])
    page = render_html(comparison, plotlyjs="plotly.min.js")
    assert page.index("<h2>Verdicts</h2>") < page.index("By depth") and "<details" not in page
    assert [trace.name for trace in comparison.figure().data if trace.showlegend] == ["one", "two"]


def test_a_sweep_over_many_models_thins_by_order_and_names_them_on_hover():
    names = [f"org/model-{i}" for i in range(30)]
    figure = models(names).figure()
    assert figure.layout.updatemenus[0].buttons[0].label == "show every model (30)"
    every = next(trace for trace in figure.data if trace.visible is False)
    assert every.customdata[0][0] == "model-0" and "step" not in every.hovertemplate
    drawn = [trace.name for trace in figure.data if trace.visible is not False and trace.showlegend]
    assert drawn[0] == "model-0" and drawn[-1] == "model-29" and len(drawn) == len(thinned(names))
