"""The errors users can cause: each names the file:line, flag or node at fault and the fix."""

from __future__ import annotations


class FglError(Exception):
    """An error the user can fix; printed as one red line, never as a traceback."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class InventoryError(FglError):
    """A bad node spec, inventory file entry or ssh config entry."""


class NodeError(FglError):
    """A node that cannot be reached or whose engine refused a request."""

    def __init__(self, node: str, message: str):
        super().__init__(f"node {node}: {message}")
        self.node = node


class PreflightError(FglError):
    """A check that failed before anything was started."""
