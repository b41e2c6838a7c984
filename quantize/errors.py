"""The converter's one exception type: a message a user can act on, on one line."""

from __future__ import annotations


class ConvertError(Exception):
    """Conversion failed for a reason the user can fix; ``str(err)`` is one line."""

    def __init__(self, message: str) -> None:
        # one line, whatever the cause carried (paths or JSON errors can hold newlines)
        super().__init__(" ".join(str(message).split()))
