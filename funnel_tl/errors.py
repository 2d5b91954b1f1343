"""The one exception type users see.

A ``FunnelError`` means bad input or a state the user can fix (unknown model, empty prompt file,
prompt longer than the context, NaN in activations). Its message is one line that names the
problem and what to do; the CLI prints it and exits with status 2, with no traceback.
``one_line(error)`` gives any exception as such a line (a failed rank's, a failed model's row).
"""


class FunnelError(Exception):
    """A user-facing error: one line naming the problem and what to do about it."""


def one_line(error: BaseException) -> str:
    """An exception as one line: a FunnelError's own message, else its type and first line.

    A first line ending in ":" says nothing alone ("Validation error for field 'hidden_size':"):
    the next line, the reason, joins it.

    >>> one_line(ValueError("bad shape\\nmore detail")), one_line(FunnelError("no prompts: give some"))
    ('ValueError: bad shape', 'no prompts: give some')
    >>> one_line(TypeError("Validation error for field 'hidden_size':\\n  must be positive\\nmore"))
    "TypeError: Validation error for field 'hidden_size': must be positive"
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{lines[0]} {lines[1]}" if lines and lines[0].endswith(":") and len(lines) > 1 else (lines or [""])[0]
    if isinstance(error, FunnelError):
        return text or "FunnelError"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
