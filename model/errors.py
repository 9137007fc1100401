"""User-facing errors: a problem the user can fix, shown by the CLI as one clear line."""


class CookError(Exception):
    """An error whose message is one line naming the problem (no traceback unless --debug)."""
