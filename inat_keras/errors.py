"""The one exception type for problems a user can cause and fix."""


class UserError(Exception):
    """A problem with the user's input: a one-line message naming the value and the fix.

    Command-line tools print it without a traceback and exit with status 2.
    """
