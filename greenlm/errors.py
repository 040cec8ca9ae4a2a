"""One exception type for everything a user can get wrong.

The CLI prints its message as one line and exits non-zero; library callers catch it like any exception.
Messages say what is wrong and what to do about it.
"""


class GreenlmError(Exception):
    """A user-facing error: bad input, missing hardware, a model that cannot be loaded."""


class MeterUnavailable(GreenlmError):
    """A meter was asked for by name but this machine cannot provide it."""
