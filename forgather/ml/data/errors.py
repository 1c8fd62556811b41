"""The error raised for dataset problems a user can fix (a wrong path, split or text field)."""

from __future__ import annotations

from forgather.errors import ForgatherError


class DatasetError(ForgatherError):
    """A dataset could not be loaded or used as asked; the message is one line naming the path or name."""
