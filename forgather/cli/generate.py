"""`forgather generate`: sample text from a saved model directory or a training checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forgather.cli import common
from forgather.errors import ForgatherError


class ModelNotFoundError(ForgatherError):
    """No loadable model at the given path."""


def find_model_dir(path: Path) -> tuple[Path, Path | None]:
    """(directory with config.json, checkpoint directory or None) for a model dir or a checkpoint."""
    path = path.resolve()
    if not path.exists():
        raise ModelNotFoundError(f"{path} does not exist")
    if (path / "manifest.json").is_file():
        for parent in path.parents:
            if (parent / "config.json").is_file():
                return parent, path
        raise ModelNotFoundError(
            f"{path} is a checkpoint, but no directory above it holds the model's config.json"
        )
    if (path / "config.json").is_file():
        return path, None
    raise ModelNotFoundError(
        f"{path} holds neither a model (config.json) nor a checkpoint (manifest.json)"
    )


def load_model(path: Path, device: str = "cpu"):
    """A model and its tokenizer from a model directory or a checkpoint directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, checkpoint = find_model_dir(path)
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True)
    if checkpoint is not None:
        from safetensors.torch import load_file

        weights = checkpoint / "model.safetensors"
        if not weights.is_file():
            raise ModelNotFoundError(f"{checkpoint} has no model.safetensors")
        missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        missing = [k for k in missing if k not in getattr(model, "_tied_weights_keys", []) or []]
        if unexpected:
            raise ModelNotFoundError(
                f"{checkpoint} does not belong to the model in {model_dir}: unexpected {unexpected[:3]}"
            )
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    return model.to(device).eval(), tokenizer


def generate(
    model: Annotated[
        Path, typer.Argument(help="A saved model directory or a checkpoint directory.")
    ],
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", help="Text to continue; repeat for several.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate per prompt.")] = 60,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 means greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option(help="Sample from the k most likely tokens (0: all).")] = 40,
    seed: Annotated[int, typer.Option(help="Random seed, for repeatable samples.")] = 0,
    device: Annotated[str, typer.Option(help="Device to run on, e.g. cpu or cuda:0.")] = "cpu",
) -> None:
    """Continue prompts with a trained model (a model directory or a checkpoint of one)."""
    import torch

    torch.manual_seed(seed)
    loaded, tokenizer = load_model(model, device)
    for text in prompt or [""]:
        encoded = tokenizer(text or (tokenizer.bos_token or ""), return_tensors="pt").to(device)
        options = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature, top_k=top_k or None)
        else:
            options.update(do_sample=False)
        with torch.no_grad():
            output = loaded.generate(**encoded, **options)
        common.echo_text(tokenizer.decode(output[0], skip_special_tokens=True))


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
