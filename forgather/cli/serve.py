"""`forgather serve`: an OpenAI-compatible HTTP server for a trained model (see docs/inference/)."""

from __future__ import annotations

from typing import Annotated

import typer

SERVE_EPILOG = (
    "Endpoints: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions "
    "(streaming with stream: true). Example: forgather serve output_models/tiny_llama, then "
    "curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' "
    '-d \'{"prompt": "It is a truth", "max_tokens": 20}\'.'
)


def serve(
    model: Annotated[
        str,
        typer.Argument(
            help="A model directory (config.json, weights, tokenizer) or a training checkpoint.",
            envvar="FORGATHER_SERVE_MODEL",
            show_envvar=True,
        ),
    ],
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on; 0.0.0.0 for every interface (then set an API key).",
            envvar="FORGATHER_SERVE_HOST",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="TCP port.", envvar="FORGATHER_SERVE_PORT")
    ] = 8000,
    served_model_name: Annotated[
        str | None,
        typer.Option(help="The model id clients use (default: the model directory's name)."),
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(
            help="auto (the saved dtype on a GPU, float32 on the CPU), float32, bfloat16, float16."
        ),
    ] = "auto",
    device: Annotated[
        str, typer.Option(help="auto (a GPU when there is one), cpu, cuda, cuda:1 ...")
    ] = "auto",
    max_batch_size: Annotated[
        int,
        typer.Option(
            min=1, help="Sequences generated at once (KV-cache slots); more requests queue."
        ),
    ] = 32,
    max_model_len: Annotated[
        int | None,
        typer.Option(
            min=2, help="Longest prompt plus completion, in tokens (default: the model's context)."
        ),
    ] = None,
    prefill_chunk: Annotated[
        int,
        typer.Option(
            min=1,
            help="Prompt tokens processed per step; running streams wait at most one chunk for a new prompt.",
        ),
    ] = 512,
    cuda_graphs: Annotated[
        bool,
        typer.Option(
            help="On a GPU, replay decode steps as CUDA graphs (one launch per step).",
        ),
    ] = True,
    chat_template: Annotated[
        str | None,
        typer.Option(
            help="Jinja chat template file (default: the tokenizer's template, else ChatML)."
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Require 'Authorization: Bearer KEY' on /v1 (prefer --api-key-file or the env var).",
            envvar="FORGATHER_API_KEY",
            show_envvar=True,
        ),
    ] = None,
    api_key_file: Annotated[
        str | None, typer.Option(help="File with accepted API keys, one per line.")
    ] = None,
    tls_cert: Annotated[
        str | None,
        typer.Option(help="Serve HTTPS with this certificate (see forgather tls init)."),
    ] = None,
    tls_key: Annotated[str | None, typer.Option(help="The TLS certificate's private key.")] = None,
    log_prompts: Annotated[
        bool, typer.Option(help="Put prompt text in the request log (off: ids, lengths, timings).")
    ] = False,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API, with continuous batching."""
    from forgather.serve.server import ServeOptions, read_api_keys
    from forgather.serve.server import serve as run_server

    run_server(
        ServeOptions(
            model=model,
            host=host,
            port=port,
            served_model_name=served_model_name,
            dtype=dtype,
            device=device,
            max_batch_size=max_batch_size,
            max_model_len=max_model_len,
            prefill_chunk=prefill_chunk,
            cuda_graphs=cuda_graphs,
            chat_template=chat_template,
            api_keys=read_api_keys(api_key, api_key_file),
            tls_cert=tls_cert,
            tls_key=tls_key,
            log_prompts=log_prompts,
        )
    )


def register(app: typer.Typer) -> None:
    app.command("serve", epilog=SERVE_EPILOG)(serve)
