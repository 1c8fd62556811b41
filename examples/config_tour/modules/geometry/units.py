"""A sibling module that area.py imports relatively (found through `submodule_searchpath`)."""

SCALE = {"mm": 0.001, "cm": 0.01, "m": 1.0}
