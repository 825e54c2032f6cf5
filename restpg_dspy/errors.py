"""The error of a bad setting, file or record given by the user, as opposed to a fault in the library.

Every such error names what was wrong (the setting, the file and line, the record and field). It is a ``ValueError``,
so code that catches ``ValueError`` keeps working; the ``restpg`` command prints it as one line and shows a
traceback for anything else.

Example:
    >>> from restpg_dspy.errors import UsageError
    >>> issubclass(UsageError, ValueError)
    True
"""


class UsageError(ValueError):
    """A setting, file or record given by the user is wrong; the message says which and why."""
