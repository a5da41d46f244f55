"""Exceptions raised by pali-engine.

Bad input raises ``ValueError`` (or a subclass of it); failures inside the
engine raise ``RuntimeError``. Nothing aborts the process.
"""


class ModelFileError(ValueError):
    """A model file is missing, unreadable, truncated, corrupted or inconsistent.

    The message names the file and what is wrong with it.
    """
