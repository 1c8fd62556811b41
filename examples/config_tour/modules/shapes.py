"""Small stdlib-only classes that the tour's configs build (loaded by file path, not as a package)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Rectangle:
    width: float
    height: float
    name: str = "rectangle"

    @property
    def area(self) -> float:
        return self.width * self.height


@dataclass
class Canvas:
    shapes: list = field(default_factory=list)
    title: str = "untitled"

    def total_area(self) -> float:
        return sum(shape.area for shape in self.shapes)
