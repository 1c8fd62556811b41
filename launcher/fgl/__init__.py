"""fgl: the forgather LAN launcher.

Kept deliberately light: it never imports torch or the forgather package.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
