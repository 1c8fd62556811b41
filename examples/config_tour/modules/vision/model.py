"""One of two files named model.py: each is loaded as its own module, keyed by its full path."""

KIND = "vision"


def describe(size: int = 1) -> str:
    return f"{KIND} model of size {size}"
