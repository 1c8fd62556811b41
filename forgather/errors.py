"""The root of errors a user can cause (bad configs, missing data, unusable checkpoints).

The CLI prints these as one line and exits 1; anything else is a bug and keeps its traceback.
"""


class ForgatherError(Exception):
    """An error the user can fix; its message says what and where."""
