"""Loading a trained causal LM for inference: a saved model directory or a training checkpoint.

A model directory is what ``save_pretrained`` writes (``config.json``, weights, tokenizer; forgather's
own also hold the model's source, for loading without forgather). A training checkpoint
(``manifest.json``; format in ``forgather.ml.train.checkpoint_format``) carries its model's config in
its ``hf/`` directory (older ones: in its run's output directory, and nowhere higher); its weights
(sharded DCP files, or one ``model.safetensors``) replace the saved ones, and every weight must match.

No code from a model directory runs unless it must and may: a forgather model is built from
forgather's own classes (the copy of its source in the directory is for other machines), a model
whose ``config.json`` has no ``auto_map`` needs no remote code, and a directory whose ``auto_map``
names its own code is refused when it, its ``config.json`` or a ``.py`` file in it is owned by
another user (root excepted) or writable by others (see `check_code_dir`).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from forgather.errors import ForgatherError
from forgather.ml.train.checkpoint_format import (
    MANIFEST,
    CheckpointError,
    model_config_dir,
    run_output_dir,
    weights_location,
)

DTYPES = ("auto", "float32", "bfloat16", "float16")


class ModelNotFoundError(ForgatherError):
    """No loadable model at the given path."""


class UntrustedCodeError(ForgatherError):
    """A model directory's own code would run, but others could have written it."""


def check_code_dir(model_dir: Path) -> None:
    """Refuse to run `model_dir`'s code when it, its config.json or one of its .py files is owned
    by another user (root excepted) or writable by users other than its owner (its owner's own
    group excepted)."""
    uid, gid = os.getuid(), os.getgid()
    for path in [model_dir, model_dir / "config.json", *sorted(model_dir.glob("*.py"))]:
        info = path.stat()
        if info.st_uid not in (uid, 0):
            problem = f"is owned by uid {info.st_uid}, not by you (uid {uid}) or root"
        elif info.st_mode & stat.S_IWOTH:
            problem = "is writable by every user"
        elif info.st_mode & stat.S_IWGRP and info.st_gid != gid:
            problem = f"is writable by group {info.st_gid}"
        else:
            continue
        raise UntrustedCodeError(
            f"refusing to run the code of {model_dir} (its config.json has an auto_map): {path} "
            f"{problem}; copy the directory to one only you can write, after reading its code"
        )


def load_custom_components(
    model_dir: Path, config: dict[str, Any], trust_remote_code: bool = True
) -> None:
    """Register the components of the user's own that a forgather model directory names, from the
    source files saved beside its config, unless this process already has them from a file of the
    same text (another version under the same key is replaced: the directory's is what its
    weights were trained with)."""
    from forgather.config.specs import load_file_module
    from forgather.ml.models.transformer.custom_components import (
        COMPONENT_FIELDS,
        CUSTOM_COMPONENTS,
        FUNCTION_FIELDS,
        is_custom,
        source_text,
    )

    def known(key: str) -> bool:  # registered, from a file with the same text as the saved one
        registered = CUSTOM_COMPONENTS.get(key)
        saved = model_dir / f"{key.partition(':')[0]}.py"
        if registered is None or not saved.is_file():
            return False
        return source_text(registered) == saved.read_text(encoding="utf-8")

    missing = {
        field: config[field]
        for field in COMPONENT_FIELDS
        if is_custom(config.get(field)) and not known(config[field])
    }
    if not missing:
        return
    if not trust_remote_code:
        raise UntrustedCodeError(
            f"{model_dir} uses components of its own ({', '.join(sorted(set(missing.values())))}) "
            "whose code is in the directory; loading it runs that code (trust_remote_code)"
        )
    check_code_dir(model_dir)
    for field, key in missing.items():
        stem, name = key.split(":", 1)
        source = model_dir / f"{stem}.py"
        if not source.is_file():
            raise ModelNotFoundError(
                f"{model_dir / 'config.json'}: {field}={key!r} but {source.name} is not in the directory"
            )
        component: Any = load_file_module(str(source))
        for part in name.split("."):
            component = getattr(component, part, None)
        what = "function" if field in FUNCTION_FIELDS else "class"
        if not (callable(component) if what == "function" else isinstance(component, type)):
            raise ModelNotFoundError(f"{source} defines no {what} {name} ({field}={key!r})")
        CUSTOM_COMPONENTS[key] = component


def _model_loaders(model_dir: Path, trust_remote_code: bool) -> tuple[Any, Any, bool]:
    """(config class, model class, whether remote code is allowed) for a model directory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(f"cannot read {model_dir / 'config.json'}: {error}") from None
    from forgather.ml.models.transformer import ForgatherConfig, ForgatherForCausalLM

    if config.get("model_type") == ForgatherConfig.model_type:
        load_custom_components(model_dir, config, trust_remote_code)
        return ForgatherConfig, ForgatherForCausalLM, False
    if trust_remote_code and config.get("auto_map"):
        check_code_dir(model_dir)
        return AutoConfig, AutoModelForCausalLM, True
    return AutoConfig, AutoModelForCausalLM, False


def find_model_dir(path: str | Path) -> tuple[Path, Path | None]:
    """(directory with config.json, checkpoint directory or None) for a model dir or a checkpoint."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise ModelNotFoundError(f"{path} does not exist")
    if (path / MANIFEST).is_file():
        config_dir = model_config_dir(path)
        if config_dir is None:
            raise ModelNotFoundError(
                f"{path} is a checkpoint without its model's config.json (neither in its hf/ "
                "directory nor in its run's output directory)"
            )
        return config_dir, path
    if (path / "config.json").is_file():
        return path, None
    raise ModelNotFoundError(
        f"{path} holds neither a model (config.json) nor a checkpoint ({MANIFEST})"
    )


def model_name(path: str | Path) -> str:
    """The name a model is known by: its directory's, or for a checkpoint its run's."""
    model_dir, checkpoint = find_model_dir(path)
    if checkpoint is None:
        return model_dir.name
    run = run_output_dir(checkpoint)
    return run.name if run is not None else checkpoint.name


def model_source(src: str | Path, checkpoint: str | None = None) -> Path:
    """`src` itself, or with `checkpoint` the named checkpoint of the run whose output directory is
    `src`: "latest", "best" (by the run's metric) or a checkpoint directory name (checkpoint-800)."""
    from forgather.ml.train.checkpoint_format import (
        best_checkpoint,
        checkpoints_dir,
        latest_checkpoint,
    )

    src = Path(src)
    if checkpoint is None:
        return src
    pick = {"latest": latest_checkpoint, "best": best_checkpoint}.get(checkpoint)
    path = pick(src) if pick else checkpoints_dir(src) / checkpoint
    if path is None and checkpoint == "best" and latest_checkpoint(src) is not None:
        raise ModelNotFoundError(
            f"--checkpoint best: no checkpoint in {checkpoints_dir(src)} records an eval_loss "
            "(the run did not evaluate when it saved); name one, or use latest"
        )
    if path is None or not Path(path).is_dir():
        raise ModelNotFoundError(
            f"--checkpoint {checkpoint}: no such checkpoint in {checkpoints_dir(src)}"
        )
    return Path(path)


def saved_dtype_name(model_dir: Path) -> str:
    """The dtype a model directory's config.json records ("float32" when it records none)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return name if name in ("float32", "bfloat16", "float16") else "float32"


def resolve_device(device: str) -> str:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_dtype(dtype: str) -> str:
    """`dtype` when it is one of `DTYPES` (the `--dtype` values), else one clear error."""
    if dtype not in DTYPES:
        raise ForgatherError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def resolve_dtype(dtype: str, device: str, config_dtype: Any = None) -> Any:
    """The torch dtype to run in: ``auto`` is the saved dtype on GPUs and float32 on the CPU."""
    import torch

    check_dtype(dtype)
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cpu"):
        return torch.float32
    if isinstance(config_dtype, str):
        config_dtype = getattr(torch, config_dtype, None)
    return config_dtype if isinstance(config_dtype, torch.dtype) else torch.float32


def _load_checkpoint_weights(model: Any, model_dir: Path, checkpoint: Path) -> None:
    """Every weight from the checkpoint (tied weights load into the one shared tensor)."""
    try:
        kind, location = weights_location(checkpoint)
    except CheckpointError as error:
        raise ModelNotFoundError(str(error)) from None
    try:
        if kind == "dcp":
            from forgather.ml.train.checkpoint import load_model_weights

            load_model_weights(model, location)
        else:
            from safetensors.torch import load_model

            load_model(model, str(location), strict=True)
    except (RuntimeError, ValueError) as error:
        raise ModelNotFoundError(
            f"{checkpoint} does not belong to the model in {model_dir}: "
            f"{' '.join(str(error).split())[:300]}"
        ) from None


def _tokenizer(model_dir: Path, config: Any, trust: bool) -> Any:
    """The tokenizer saved in `model_dir`; given the model's config, AutoTokenizer does not read
    (and ask about) the directory's own code."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, config=config, trust_remote_code=trust)
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(f"cannot load the tokenizer in {model_dir}: {error}") from None


def load_tokenizer_of(path: str | Path, trust_remote_code: bool = True) -> Any:
    """The tokenizer saved with the model at `path` (a model directory or checkpoint), loaded as
    `load_causal_lm` loads it, without the weights."""
    model_dir, _ = find_model_dir(path)
    config_class, _, trust = _model_loaders(model_dir, trust_remote_code)
    try:
        config = config_class.from_pretrained(model_dir, trust_remote_code=trust)
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(f"cannot load the config in {model_dir}: {error}") from None
    return _tokenizer(model_dir, config, trust)


def load_causal_lm(
    path: str | Path,
    device: str = "cpu",
    dtype: str = "auto",
    trust_remote_code: bool = True,
    require_tokenizer: bool = True,
) -> tuple[Any, Any, Path]:
    """(model in eval mode on ``device``, tokenizer, model directory) for a model dir or checkpoint.

    ``trust_remote_code``: allow a (non-forgather) model directory's own code, subject to
    `check_code_dir`. Without ``require_tokenizer`` a directory without tokenizer files gives
    None for the tokenizer instead of an error.
    """

    model_dir, checkpoint = find_model_dir(path)
    device = resolve_device(device)
    config_class, model_class, trust = _model_loaders(model_dir, trust_remote_code)
    code = {"trust_remote_code": trust}  # explicit either way: transformers never asks on stdin
    try:
        config = config_class.from_pretrained(model_dir, **code)
        torch_dtype = resolve_dtype(dtype, device, getattr(config, "dtype", None))
        if checkpoint is None:
            model = model_class.from_pretrained(model_dir, dtype=torch_dtype, **code)
        else:  # the weights come from the checkpoint: build the model from its config alone
            if hasattr(model_class, "from_config"):  # the Auto class
                model = model_class.from_config(config, dtype=torch_dtype, **code)
            else:
                model = model_class._from_config(config, dtype=torch_dtype)
            if (model_dir / "generation_config.json").is_file():
                from transformers import GenerationConfig

                model.generation_config = GenerationConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(f"cannot load the model in {model_dir}: {error}") from None
    try:
        tokenizer = _tokenizer(model_dir, config, trust)
    except ModelNotFoundError:
        if require_tokenizer:
            raise
        tokenizer = None
    if checkpoint is not None:
        _load_checkpoint_weights(model, model_dir, checkpoint)
    return model.to(device).eval(), tokenizer, model_dir
