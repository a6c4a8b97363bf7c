"""The one exception type users see: the CLI prints it as a single line, never a traceback."""


class SldartsError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""
