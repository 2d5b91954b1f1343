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

    >>> one_line(ValueError("bad shape\\nmore detail")), one_line(FunnelError("no prompts: give some"))
    ('ValueError: bad shape', 'no prompts: give some')
    """
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, FunnelError):
        return text or "FunnelError"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
