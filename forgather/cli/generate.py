"""`forgather generate`: sample text from a saved model directory or a training checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forgather.cli import common


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
    device: Annotated[
        str, typer.Option(help="Device to run on: auto (a GPU when there is one), cpu, cuda:0.")
    ] = "cpu",
    chat: Annotated[
        bool,
        typer.Option(
            "--chat",
            help="Treat each prompt as a user message: render it with the model's chat template "
            "(ChatML when it has none) and print the assistant's reply.",
        ),
    ] = False,
    system: Annotated[
        str | None, typer.Option("--system", help="With --chat: a system message first.")
    ] = None,
) -> None:
    """Continue prompts with a trained model (a model directory or a checkpoint of one).

    With --chat each prompt is a user turn of a conversation and the reply ends at the template's
    end of turn (or the model's EOS).
    """
    import torch

    from forgather.ml.models.loading import load_causal_lm

    torch.manual_seed(seed)
    loaded, tokenizer, _ = load_causal_lm(model, device)
    device = str(loaded.device)
    if system is not None and not chat:
        raise typer.BadParameter("--system needs --chat", param_hint="--system")
    options = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
    if temperature > 0:
        options.update(do_sample=True, temperature=temperature, top_k=top_k or None)
    else:
        options.update(do_sample=False)
    if chat:
        from forgather.serve.chat import chat_format, render_chat

        fmt = chat_format(tokenizer)
        if fmt.stops:
            options.update(stop_strings=list(fmt.stops), tokenizer=tokenizer)
    for text in prompt or [""]:
        if chat:
            messages = [{"role": "system", "content": system}] if system else []
            ids = render_chat(tokenizer, fmt, [*messages, {"role": "user", "content": text}])
            encoded = {"input_ids": torch.tensor([ids], device=device)}
        else:
            start = text or (tokenizer.bos_token or "")
            encoded = tokenizer(start, return_tensors="pt").to(device)
        with torch.no_grad():
            output = loaded.generate(**encoded, **options)
        if chat:  # the reply alone
            output = output[:, encoded["input_ids"].shape[1] :]
        common.echo_text(tokenizer.decode(output[0], skip_special_tokens=True))


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
