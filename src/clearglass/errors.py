"""The one project exception type."""


class ClearglassError(ValueError):
    """Bad input to clearglass: the message names the file, the record and what was expected."""
