"""The one error type the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations


class CifarSearchError(Exception):
    """A problem the user can fix (bad input, missing data, unknown study, ...).

    The message is shown as is, on one line, so it must say what is wrong and what to do next.
    """
