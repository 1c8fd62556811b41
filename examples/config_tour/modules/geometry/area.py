"""Uses a relative import; the config passes `submodule_searchpath` so `.units` can be found."""

from .units import SCALE


def square_metres(width: float, height: float, unit: str = "m") -> float:
    return width * SCALE[unit] * height * SCALE[unit]
