"""The one exception type whose message is shown to users as a one-line error."""
from __future__ import annotations


class StpmError(Exception):
    """An error the user can act on.

    The message is a single line, e.g. ``model.pt: not an stpm-edge checkpoint
    (missing key 'student')``. The CLI prints it prefixed with the command name and
    exits non-zero; library callers can catch it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (its type name if empty), shortened."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
