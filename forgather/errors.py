"""The root of errors a user can cause (bad configs, missing data, unusable checkpoints).

The CLI prints these as one line and exits 1; anything else is a bug and keeps its traceback.
"""


class ForgatherError(Exception):
    """An error the user can fix; its message says what and where."""


def describe_os_error(error: OSError) -> str:
    """One line for a filesystem error: the path(s), the cause, and what to do when there is more
    to say (a full disk)."""
    import errno

    paths = " -> ".join(str(p) for p in (error.filename, error.filename2) if p is not None)
    cause = error.strerror or str(error) or type(error).__name__
    line = f"{paths}: {cause}" if paths else cause
    if error.errno == errno.ENOSPC:
        line += " (the disk is full: free space, then resume; complete checkpoints are kept)"
    return line
