"""Converters between a Hugging Face model family and forgather's causal LM, registered by name.

A converter maps a family's config to forgather's config fields (naming every feature it cannot
carry), builds the family's config back from a forgather one, and maps the state dict both ways
(renaming, and where the layouts differ, splitting or transposing tensors).
`register(converter)` adds one (a project's own included); `for_hf(model_type)` and
`for_forgather(config)` find the one to use.
"""

from __future__ import annotations

from typing import Any, Protocol

from forgather.errors import ForgatherError


class UnsupportedFeature(ForgatherError):
    """The source model uses something the target cannot express; the message names it."""


class Converter(Protocol):
    name: str
    hf_model_types: tuple[str, ...]
    """Hugging Face `model_type`s this converter reads (and may write)."""

    def hf_model_type_for(self, config: Any) -> str:
        """The `model_type` to write for the forgather model `config` unless one is asked for."""
        ...

    def to_forgather_config(self, hf_config: Any) -> dict[str, Any]:
        """ForgatherConfig fields for `hf_config`; raises UnsupportedFeature."""
        ...

    def from_forgather_config(self, config: Any, model_type: str) -> Any:
        """The Hugging Face config of `model_type` for a forgather config; raises
        UnsupportedFeature."""
        ...

    def accepts_forgather(self, config: Any) -> bool:
        """Whether this family can express the forgather model `config`."""
        ...

    def to_forgather_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The forgather model's state dict from the Hugging Face one (renamed, split, ...)."""
        ...

    def to_hf_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The Hugging Face model's state dict from the forgather one."""
        ...


_CONVERTERS: dict[str, Converter] = {}


def register(converter: Converter) -> Converter:
    """Add (or replace) a converter under its `name`; returns it (usable as a class decorator's
    result)."""
    _CONVERTERS[converter.name] = converter
    return converter


def names() -> list[str]:
    _load_builtins()
    return sorted(_CONVERTERS)


def get(name: str) -> Converter:
    _load_builtins()
    try:
        return _CONVERTERS[name]
    except KeyError:
        raise UnsupportedFeature(
            f"no converter named {name!r}; known: {', '.join(sorted(_CONVERTERS))}"
        ) from None


def for_hf(model_type: str) -> Converter:
    """The converter that reads Hugging Face `model_type`."""
    _load_builtins()
    for converter in _CONVERTERS.values():
        if model_type in converter.hf_model_types:
            return converter
    known = sorted(t for c in _CONVERTERS.values() for t in c.hf_model_types)
    raise UnsupportedFeature(
        f"model_type {model_type!r} has no converter; known: {', '.join(known)}"
    )


def for_forgather(config: Any) -> Converter:
    """The first registered converter whose family expresses forgather `config`."""
    _load_builtins()
    for converter in _CONVERTERS.values():
        if converter.accepts_forgather(config):
            return converter
    raise UnsupportedFeature(
        "no Hugging Face family expresses this forgather model (norm "
        f"{config.norm}, feed-forward {config.feedforward}, positions "
        f"{config.positional_encoding}, layers {config.layer_type}, qk_norm {config.qk_norm})"
    )


def _load_builtins() -> None:
    from forgather.ml.convert import gpt2, llama  # noqa: F401 (they register themselves)


__all__ = ["Converter", "UnsupportedFeature", "for_forgather", "for_hf", "get", "names", "register"]
