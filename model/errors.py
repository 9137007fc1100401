"""User-facing errors: a problem the user can fix, shown by the CLI as one clear line, with its own exit code.

Exit codes (the CLI's; a Prefect run that raises one of these ends Failed):

| code | meaning |
| --- | --- |
| 0 | done: nothing left to retry |
| 1 | failed (`CookError`) |
| 2 | bad input or settings, refused before any work started (the CLI's argument checks) |
| 3 | `Incomplete`: the run finished and saved its work, but transient failures are left; run it again to retry them |
| 4 | `OutputBusy`: another cook run is writing the same output folder |
| 5 | `SourceUnavailable`: a host that cannot be reached, or credentials the source rejects; nothing more was tried |
"""


class CookError(Exception):
    """An error whose message is one line naming the problem (no traceback unless --debug)."""

    exit_code = 1


class Incomplete(CookError):
    """A run that saved what it could but left transient failures (pages, videos) to a later run."""

    exit_code = 3


class OutputBusy(CookError):
    """Another cook run holds the output folder's lock."""

    exit_code = 4


class SourceUnavailable(CookError):
    """A source cannot be used at all: its host is unreachable, or it rejects the credentials."""

    exit_code = 5
