"""The one exception type the CLI turns into a clean, non-zero exit."""


class TextclfError(Exception):
    """A problem the user can fix: the message names the file/row/field and the fix.

    The CLI prints the message (no traceback) and exits with status 1.
    """
