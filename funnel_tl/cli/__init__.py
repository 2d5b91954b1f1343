"""The ``funnel-tl`` command line: the parser and entry point, the commands, option types, environment variables.

Every name below is imported from its module on first use (PEP 562), so importing the
subpackage imports no torch.
"""

import importlib
from typing import TYPE_CHECKING

# Each public name and the module it lives in.
_EXPORTS = {
    "add_model_options": "entry",
    "add_scale_options": "entry",
    "add_text_options": "entry",
    "add_bootstrap_options": "entry",
    "add_position_options": "entry",
    "add_page_options": "entry",
    "build_parser": "entry",
    "add_effects_parser": "entry",
    "main": "entry",
    "TOP_HEADS": "output",
    "read_cli_prompts": "commands",
    "placement": "commands",
    "prompt_notes": "commands",
    "cmd_effects": "commands",
    "cmd_run": "commands",
    "IMAGES_HINT": "output",
    "find_results": "report",
    "cmd_report": "report",
    "measure_options": "commands",
    "command_provenance": "commands",
    "cmd_heads": "commands",
    "cmd_compare": "commands",
    "attach_layer_specs": "commands",
    "unexpected": "output",
    "check_png": "output",
    "print_positions": "output",
    "save_files": "output",
    "render": "output",
    "images_line": "output",
    "head_images": "output",
    "compare_images": "output",
    "effects_images": "output",
    "checked": "options",
    "drop_first": "options",
    "MAX_SINK_POSITIONS": "options",
    "MEMORY_SIZE": "options",
    "NEEDS": "options",
    "at_least": "options",
    "whole_or": "options",
    "batch_size": "options",
    "max_tokens": "options",
    "stack": "options",
    "interventions": "options",
    "bootstrap": "options",
    "layers": "options",
    "checkpoint": "options",
    "max_memory": "options",
    "label": "options",
    "text": "options",
    "check_needs": "options",
    "PREFIX": "environment",
    "DEFAULT_TIMEOUT_MINUTES": "environment",
    "MAX_TIMEOUT_MINUTES": "environment",
    "VARIABLES": "environment",
    "value": "environment",
    "check": "environment",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from funnel_tl.cli.commands import (
        attach_layer_specs,
        cmd_compare,
        cmd_effects,
        cmd_heads,
        cmd_run,
        command_provenance,
        measure_options,
        placement,
        prompt_notes,
        read_cli_prompts,
    )
    from funnel_tl.cli.entry import (
        add_bootstrap_options,
        add_effects_parser,
        add_model_options,
        add_page_options,
        add_position_options,
        add_scale_options,
        add_text_options,
        build_parser,
        main,
    )
    from funnel_tl.cli.environment import DEFAULT_TIMEOUT_MINUTES, MAX_TIMEOUT_MINUTES, PREFIX, VARIABLES, check, value
    from funnel_tl.cli.options import (
        MAX_SINK_POSITIONS,
        MEMORY_SIZE,
        NEEDS,
        at_least,
        batch_size,
        bootstrap,
        check_needs,
        checked,
        checkpoint,
        drop_first,
        interventions,
        label,
        layers,
        max_memory,
        max_tokens,
        stack,
        text,
        whole_or,
    )
    from funnel_tl.cli.output import (
        IMAGES_HINT,
        TOP_HEADS,
        check_png,
        compare_images,
        effects_images,
        head_images,
        images_line,
        print_positions,
        render,
        save_files,
        unexpected,
    )
    from funnel_tl.cli.report import cmd_report, find_results


def __getattr__(name: str):
    """A public name, imported from its module on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
