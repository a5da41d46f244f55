"""Exceptions raised by pali-engine.

Bad input raises ``ValueError`` (or a subclass of it); failures inside the
engine raise ``RuntimeError``. Nothing aborts the process.
"""


class ModelFileError(ValueError):
    """A model file is missing, unreadable, truncated, corrupted or inconsistent.

    The message names the file and what is wrong with it.
    """


class EngineBusy(RuntimeError):
    """The engine already has as many requests waiting as it accepts (``max_queue``): retry later.

    The HTTP server answers it with 429.
    """


def short_repr(value, limit: int = 60) -> str:
    """``repr(value)`` for an error message: at most ``limit`` characters, so that a
    message stays one short line whatever the caller passed."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # a value that cannot print itself (too deep, too many digits)
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit] + "..."
