"""The one exception type for problems a user can cause and fix."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: a one-line message naming the value and the fix.

    Command-line tools print it without a traceback and exit with status 2.
    """


def brief(error: BaseException, limit: int = 200) -> str:
    """An exception's message on one line for a UserError: whitespace collapsed, cut at a word with an ellipsis."""
    text = " ".join(str(error).split()) or type(error).__name__
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " …"
