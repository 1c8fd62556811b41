"""forgather: configuration-driven training and serving of language models."""

__version__ = "0.1.0"

__all__ = ["Project", "from_project", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import forgather` stays cheap for the CLI and the launcher tests.
    if name in ("Project", "from_project"):
        from forgather import project

        return getattr(project, name)
    raise AttributeError(f"module 'forgather' has no attribute {name!r}")
