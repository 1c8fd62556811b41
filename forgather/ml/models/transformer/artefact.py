"""What a saved forgather model directory needs to load by its own code.

``ForgatherPreTrainedModel.save_pretrained`` calls :func:`write_model_code` after the weights and
config are written, so a plain ``model.save_pretrained(dir)`` gives a directory that
``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` loads where forgather is not
installed: this package's source, the source of any component of the user's own with a
``custom_components.py`` that imports it, and a ``config.json`` whose ``auto_map`` and
``architectures`` name this package's classes.

Part of the self-contained remote-code package: standard library only.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .custom_components import COMPONENT_FIELDS, component_key, is_custom, lookup

FORMAT = 1
"""The format of saved directories this code writes (config.json's `forgather_format`; absent:
format 0). Bump it with a migration in forgather.ml.models.update when a saved directory of the
previous format would not load, or would compute differently, in this code."""

PACKAGE_DIR = Path(__file__).resolve().parent
AUTO_MAP = {
    "AutoConfig": "configuration_forgather.ForgatherConfig",
    "AutoModel": "modeling_forgather.ForgatherModel",
    "AutoModelForCausalLM": "modeling_forgather.ForgatherForCausalLM",
}
REGISTRY_FILE = "custom_components.py"
# Where a saved directory's custom_components.py ends the package's text and starts its imports.
REGISTRY_MARK = "# The components this model directory uses (written when it was saved)."


def package_source_files() -> list[Path]:
    """The package's source files (what every saved directory gets a copy of)."""
    return sorted(PACKAGE_DIR.glob("*.py"))


def write_model_code(model: Any, directory: str | os.PathLike) -> None:
    """Copy the package source and the user's component files into `directory` and point its
    config.json (already written) at them. `model` is the model (or its config)."""
    out = Path(directory)
    config = getattr(model, "config", model)
    for source in package_source_files():
        if source.name != REGISTRY_FILE and source.resolve() != (out / source.name).resolve():
            shutil.copyfile(source, out / source.name)
    _write_components(config, out, _classes_in_use(model))
    config_path = out / "config.json"
    if config_path.exists():
        fields = json.loads(config_path.read_text(encoding="utf-8"))
        fields["auto_map"] = dict(AUTO_MAP)
        fields["forgather_format"] = FORMAT
        if model is not config:
            fields["architectures"] = [_model_class_name(model)]
        config_path.write_text(
            json.dumps(fields, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )


def _classes_in_use(model: Any) -> dict[str, type]:
    """The classes the model's modules are, by component key (empty for a bare config)."""
    modules = getattr(model, "modules", None)
    return {component_key(type(m)): type(m) for m in modules()} if callable(modules) else {}


def _write_components(config: Any, out: Path, in_use: dict[str, type]) -> None:
    """custom_components.py: the package's registry, plus (when the config names components of
    the user's own) imports of their copied source files that fill it."""
    text = (PACKAGE_DIR / REGISTRY_FILE).read_text(encoding="utf-8")
    text = text.partition(REGISTRY_MARK)[0].rstrip() + "\n"  # a saved copy's imports go
    keys = sorted(
        {getattr(config, f) for f in COMPONENT_FIELDS if is_custom(getattr(config, f, None))}
    )
    if keys:
        lines = ["", "", REGISTRY_MARK]
        entries = []
        for key in keys:
            field = next(f for f in COMPONENT_FIELDS if getattr(config, f, None) == key)
            cls = in_use.get(key) or lookup(field, key, ())  # what the model was built with
            source = inspect.getsourcefile(cls)
            if source is None:
                raise ValueError(f"{field}={key!r}: the source file of {cls!r} cannot be found")
            stem, name = key.split(":", 1)
            if Path(source).resolve() != (out / f"{stem}.py").resolve():
                shutil.copyfile(source, out / f"{stem}.py")
            lines.append(f"from .{stem} import {name.partition('.')[0]}  # noqa: E402")
            entries.append(f"    {key!r}: {name},")
        text += "\n".join([*lines, "", "CUSTOM_COMPONENTS.update({", *entries, "})", ""])
    (out / REGISTRY_FILE).write_text(text, encoding="utf-8")


def _model_class_name(model: Any) -> str:
    """The model's own class (an FSDP2-sharded model's class is a generated FSDP<Class>)."""
    for cls in type(model).__mro__:
        if cls.__module__.endswith(".modeling_forgather"):  # installed or remote-code package
            return cls.__name__
    return type(model).__name__
