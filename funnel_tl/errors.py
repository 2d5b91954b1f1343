"""The one exception type users see.

A ``FunnelError`` means bad input or a state the user can fix (unknown model, empty prompt file,
prompt longer than the context, NaN in activations). Its message is one line that names the
problem and what to do; the CLI prints it and exits with status 2, with no traceback.
"""


class FunnelError(Exception):
    """A user-facing error: one line naming the problem and what to do about it."""
