"""GGUF model files (llama.cpp, Ollama, LM Studio) as a model source.

transformers reads a GGUF file with the ``gguf`` package and *dequantizes* every tensor into the
dtype asked for (``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)``); the model
measured is that dequantized model, an ordinary HF model. A Q4 file's gains are therefore those
of its dequantized weights, not of the original full-precision checkpoint: ``provenance`` keeps
the file's sha256 and the quantization type of its tensors so a result says which weights it is.

A model source is GGUF when it is a ``.gguf`` file, or a folder without ``config.json`` holding
exactly one ``.gguf`` file. The tokenizer is the HF one of the file's folder when that folder has
tokenizer files (``tokenizer.json``, ...: the original tokenizer, which the GGUF's is converted
from), else the one embedded in the GGUF file; ``provenance["gguf"]["tokenizer"]`` says which.

Everything a file's metadata can refuse is refused here, before a weight is read: a missing
``gguf`` package, a file that is not GGUF, an architecture transformers cannot read from GGUF, and
(via ``architectures.check_decoder_config``) a model funnel_tl does not measure.

>>> is_gguf("SmolLM2-135M-Instruct.Q4_1.gguf"), is_gguf("model.safetensors")
(True, False)
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from funnel_tl.errors import FunnelError
from funnel_tl.models.architectures import check_decoder_config
from funnel_tl.models.folders import TOKENIZER_FILES, first_line
from funnel_tl.models.pypi import sha256_of

INSTALL = "pip install 'funnel_tl[gguf]'"
# The oldest gguf package transformers reads GGUF files with (transformers.utils.import_utils).
MINIMUM_GGUF = (0, 10)
MAGIC = b"GGUF"


def is_gguf(path: str | os.PathLike) -> bool:
    """A path whose name ends in ``.gguf`` (any case)."""
    return str(path).lower().endswith(".gguf")


def gguf_in_folder(folder: Path) -> Path | None:
    """The one ``.gguf`` file of a folder that has no ``config.json``, or None if it has none.

    Raises ``FunnelError`` when it holds several: which one is meant is the user's to say.
    """
    if (folder / "config.json").is_file():
        return None
    found = sorted(p for p in folder.iterdir() if is_gguf(p.name) and p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise FunnelError(f"{folder} holds {len(found)} GGUF files ({names}): name one, e.g. --model {found[0]}")
    return found[0] if found else None


def require_gguf(name: str) -> None:
    """The ``gguf`` package transformers reads GGUF files with is installed, or one line naming the install."""

    try:
        import gguf  # noqa: F401
    except ImportError:
        raise FunnelError(f"{name} is a GGUF file, and reading it needs the gguf package: {INSTALL}") from None
    try:
        installed = version("gguf")
        too_old = tuple(int(part) for part in installed.split(".")[:2]) < MINIMUM_GGUF
    except (PackageNotFoundError, ValueError):  # no metadata, or an odd version string: transformers judges it
        return
    if too_old:
        raise FunnelError(
            f"{name} is a GGUF file, and transformers reads GGUF files with gguf >= "
            f"{'.'.join(map(str, MINIMUM_GGUF))} (installed: {installed}): {INSTALL} --upgrade"
        )


# (path, size, mtime) -> config: the CLI checks a file's config before it loads, and the load reuses it.
_CONFIGS: dict[tuple[str, int, int], object] = {}


def gguf_config(path: Path, name: str | None = None):
    """The HF config transformers builds from a GGUF file's metadata (no tensor is read), checked.

    Refuses in one line: no ``gguf`` package, not a GGUF file, an architecture transformers
    cannot read from GGUF, or a model that is not a decoder-only transformer (or has no layers).
    Cached per file, so the cheap check before a load and the load itself parse the file once.
    """
    name = name or str(path)
    require_gguf(name)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _CONFIGS:
        with open(path, "rb") as handle:
            if handle.read(4) != MAGIC:
                raise FunnelError(
                    f"{name} is not a GGUF file (it does not start with 'GGUF'): give a .gguf "
                    "model file, or a HuggingFace checkpoint folder"
                )
        # Imported on use: transformers takes seconds to import (not needed by `--help`).
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        except ValueError as error:
            raise FunnelError(_unreadable(name, path, error)) from None
        except (OSError, KeyError, IndexError, TypeError) as error:
            raise FunnelError(f"{name} is not a readable GGUF file ({first_line(error)}): re-download it") from None

        check_decoder_config(config.to_dict(), name)
        _CONFIGS[key] = config
    return copy.deepcopy(_CONFIGS[key])


def _unreadable(name: str, path: Path, error: ValueError) -> str:
    text = first_line(error)
    if "not supported" in text:
        # Imported on use: transformers takes seconds to import (not needed by `--help`).
        import transformers

        architecture = _metadata(path, "general.architecture") or "this"
        return (
            f"{name}: transformers {transformers.__version__} cannot read {architecture} models from GGUF files "
            f"(it reads {', '.join(readable_architectures())}): give the model as a HuggingFace checkpoint folder"
        )
    return f"{name} is not a readable GGUF file ({text}): re-download it"


def readable_architectures() -> list[str]:
    """The ``general.architecture`` values the installed transformers reads from GGUF files."""
    # Imported on use: transformers takes seconds to import (not needed by `--help`).
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"})  # metadata sections, not architectures


def _metadata(path: Path, key: str):
    """One metadata value of a GGUF file (a string or a number), or None."""
    try:
        # Imported on use: gguf is needed by GGUF files only (``require_gguf`` names its install).
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields.get(key)
        if field is None or not field.data:
            return None
        return field.contents()
    except Exception:  # only used to word a refusal: the refusal stands without it
        return None


@contextlib.contextmanager
def parsed_once(path: Path):
    """Within: every ``gguf.GGUFReader(path)`` is one reader, and ``gguf.get_tensor_name_map`` is cached.

    transformers parses a GGUF file anew for its config, its tokenizer and its weights (each
    parse reads every metadata field, the whole vocabulary included: ~2 s for SmolLM2's 49k
    tokens), and builds the same tensor-name map once per submodule (397 times for SmolLM2).
    Both are imported from ``gguf`` at each call, so sharing them here changes nothing but the
    time: the reader is read-only (memory-mapped), the map a pure function of (architecture, layers).
    """
    # Imported on use: gguf is needed by GGUF files only (``require_gguf`` names its install).
    import gguf

    original_reader, original_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[str, object] = {}
    maps: dict[tuple, object] = {}
    target = str(Path(path).resolve())

    def reader(file, *args, **kwargs):
        if str(Path(file).resolve()) != target or args or kwargs:
            return original_reader(file, *args, **kwargs)
        if target not in readers:
            readers[target] = original_reader(target)
        return readers[target]

    def name_map(arch, n_blocks):
        if (arch, n_blocks) not in maps:
            maps[(arch, n_blocks)] = original_map(arch, n_blocks)
        return maps[(arch, n_blocks)]

    # Patched for this load and restored below: gguf's annotations type them as a class and its function.
    gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map  # type: ignore[misc, assignment]
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = original_reader, original_map  # type: ignore[misc]


def gguf_tokenizer(path: Path):
    """``(tokenizer, which)``: the folder's HF tokenizer when it has one (``"folder"``), else the
    one the GGUF file embeds (``"gguf"``). Both follow the file's own settings: the GGUF
    tokenizer adds a BOS only where the file's ``tokenizer.ggml.add_bos_token`` says so."""
    # Imported on use: transformers takes seconds to import (not needed by `--help`).
    from transformers import AutoTokenizer

    folder = path.parent
    if any((folder / file).is_file() for file in TOKENIZER_FILES):
        return AutoTokenizer.from_pretrained(str(folder)), "folder"
    # The config passed in: AutoTokenizer would otherwise parse the whole file once more to build it.
    return AutoTokenizer.from_pretrained(str(folder), gguf_file=path.name, config=gguf_config(path)), "gguf"


def gguf_provenance(path: Path) -> dict:
    """What a result measured from a GGUF file records: the file, its sha256, and how many of its
    tensors each quantization type holds (``{"Q4_1": 210, "F32": 61, "Q8_0": 1}``)."""
    # Imported on use: gguf is needed by GGUF files only (``require_gguf`` names its install).
    from gguf import GGUFReader

    types = Counter(tensor.tensor_type.name for tensor in GGUFReader(str(path)).tensors)
    return {
        "file": str(path.resolve()),
        "sha256": sha256_of(path),
        "tensor_types": dict(sorted(types.items(), key=lambda item: (-item[1], item[0]))),
    }
