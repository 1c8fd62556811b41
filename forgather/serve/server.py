"""Start serving: bind the port, load the model, start the engine, run uvicorn, shut down cleanly.

The port is bound (and TLS files loaded) before the model is, so a busy port or a bad certificate is
reported at once rather than after a long load.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgather.errors import ForgatherError

STATE_FILE_ENV = "FORGATHER_SERVE_STATE_FILE"
log = logging.getLogger("forgather.serve")


class ServeError(ForgatherError):
    """The server cannot start (port, TLS files, API key file, model)."""


@dataclass
class ServeOptions:
    """Everything ``forgather serve`` is given."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    max_batch_size: int = 32
    max_model_len: int | None = None
    prefill_chunk: int = 512
    cuda_graphs: bool = True
    chat_template: str | None = None
    api_keys: tuple[str, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    log_prompts: bool = False


def read_api_keys(key: str | None, key_file: str | None) -> tuple[str, ...]:
    """The accepted keys: ``--api-key`` and every non-empty, non-comment line of ``--api-key-file``."""
    keys = [key.strip()] if key and key.strip() else []
    if key_file:
        path = Path(key_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise ServeError(f"--api-key-file {path}: {error.strerror or error}") from None
        found = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if not found:
            raise ServeError(f"--api-key-file {path}: no key in the file")
        keys += found
    return tuple(keys)


def check_tls(cert: str | None, key: str | None) -> None:
    """Both files or neither; they must load as a certificate chain and its key."""
    if bool(cert) != bool(key):
        raise ServeError("--tls-cert and --tls-key go together: pass both (or neither)")
    if not cert:
        return
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as error:
        raise ServeError(f"TLS: {error.filename}: no such file") from None
    except (ssl.SSLError, OSError) as error:
        raise ServeError(
            f"TLS: cannot load --tls-cert {cert} with --tls-key {key}: {error}"
        ) from None


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (IPv6 when host is an IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only then, and
    # without it Nagle's algorithm held each streamed chunk back ~40 ms on kept-alive connections.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == 98:
            raise ServeError(
                f"--port {port}: the port is in use on {host}; stop what holds it or pass another --port"
            ) from None
        raise ServeError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def write_state(options: ServeOptions) -> Path | None:
    """Where the image's healthcheck finds the server (only when FORGATHER_SERVE_STATE_FILE is set)."""
    target = os.environ.get(STATE_FILE_ENV)
    if not target:
        return None
    path = Path(target)
    state = {
        "host": options.host,
        "port": options.port,
        "scheme": "https" if options.tls_cert else "http",
    }
    try:
        path.write_text(json.dumps(state), encoding="utf-8")
    except OSError as error:
        log.warning("cannot write %s for the healthcheck: %s", path, error)
        return None
    return path


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s serve: %(message)s"))
    for name in ("forgather.serve", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _graceful_server_class() -> type:
    import uvicorn

    class Graceful(uvicorn.Server):
        """uvicorn's server without its signal handling (which re-raises the signal at the end,
        so SIGTERM would kill the process before the engine process is stopped)."""

        def capture_signals(self) -> contextlib.AbstractContextManager[None]:
            return contextlib.nullcontext()

    return Graceful


def GracefulServer(config: Any) -> Any:  # noqa: N802 - a class factory (uvicorn imported lazily)
    return _graceful_server_class()(config)


@contextlib.contextmanager
def stop_on_signals(http: Any) -> Iterator[None]:
    """SIGINT/SIGTERM stop the server gracefully (open streams get a few seconds); a second SIGINT
    stops it at once."""

    def handle(signum: int, frame: Any) -> None:
        if http.should_exit and signum == signal.SIGINT:
            http.force_exit = True
        http.should_exit = True

    saved = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def load_tokenizer(model: str) -> tuple[Any, Path]:
    """The tokenizer of a model directory (or of a checkpoint's model directory)."""
    from transformers import AutoTokenizer

    from forgather.ml.models.loading import ModelNotFoundError, find_model_dir

    model_dir, _ = find_model_dir(model)
    try:
        return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True), model_dir
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(f"cannot load the tokenizer in {model_dir}: {error}") from None


def serve(options: ServeOptions) -> None:
    """Serve ``options.model`` until SIGINT/SIGTERM."""
    import uvicorn

    from forgather.ml.models.loading import model_name
    from forgather.serve.app import Server, ServerSettings
    from forgather.serve.chat import chat_format
    from forgather.serve.worker import EngineConfig, EngineProcess

    configure_logging()
    check_tls(options.tls_cert, options.tls_key)
    tokenizer, model_dir = load_tokenizer(options.model)
    fmt = chat_format(tokenizer, options.chat_template)
    sock = bind(options.host, options.port)
    scheme = "https" if options.tls_cert else "http"
    state = None
    log.info("loading %s in the engine process", options.model)
    engine = EngineProcess(
        EngineConfig(
            model=options.model,
            device=options.device,
            dtype=options.dtype,
            max_batch_size=options.max_batch_size,
            max_model_len=options.max_model_len,
            prefill_chunk=options.prefill_chunk,
            cuda_graphs=options.cuda_graphs,
        )
    )
    try:
        info = engine.wait_ready()
        name = options.served_model_name or model_name(options.model)
        log.info(
            "loaded %s (%.2fM parameters, %s on %s) in %.1f s; KV cache %.1f MiB for %d sequences "
            "of up to %d tokens; chat template: %s",
            name,
            info.parameters / 1e6,
            info.dtype,
            info.device,
            info.load_seconds,
            info.cache_bytes / 2**20,
            info.max_batch_size,
            info.max_model_len,
            fmt.source,
        )
        shown = f"[{options.host}]" if ":" in options.host else options.host
        server = Server(
            engine,
            tokenizer,
            ServerSettings(
                model_name=name,
                model_dir=str(model_dir),
                chat=fmt,
                api_keys=options.api_keys,
                log_prompts=options.log_prompts,
            ),
            on_ready=lambda: log.info(
                "serving %s at %s://%s:%d/v1 (Ctrl-C stops)", name, scheme, shown, options.port
            ),
        )
        if not options.api_keys and options.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "no API key: anyone who reaches %s:%d can use the model", options.host, options.port
            )
        config = uvicorn.Config(
            server.app,
            log_config=None,
            access_log=False,
            ssl_certfile=options.tls_cert,
            ssl_keyfile=options.tls_key,
            timeout_graceful_shutdown=5,
        )
        http = GracefulServer(config)
        exit_reason: list[str] = []

        def engine_exited(reason: str) -> None:
            exit_reason.append(reason)
            http.should_exit = True

        engine.on_exit = engine_exited
        state = write_state(options)
        with stop_on_signals(http):
            http.run(sockets=[sock])
        if exit_reason:
            raise ServeError(f"stopped: {exit_reason[0]}")
        log.info("stopped")
    finally:
        engine.close()
        sock.close()
        if state is not None:
            state.unlink(missing_ok=True)
