"""A real `forgather serve` subprocess for the serving tests, and greedy references from generate()."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

START_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``forgather serve MODEL --port P ARGS``; started by ``start()``, stopped by ``stop()``."""

    def __init__(
        self, model: Path, env: dict[str, str], log: Path, *args: str, scheme: str = "http"
    ):
        self.port = free_port()
        self.argv = [
            sys.executable, "-m", "forgather.cli.main", "serve", str(model),
            "--port", str(self.port), *args,
        ]  # fmt: skip
        self.env = env
        self.log_path = log
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None

    def start(self, verify: bool | ssl.SSLContext = True) -> Server:
        self.log_file = self.log_path.open("w")
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1, verify=verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"no /health within {START_TIMEOUT} s:\n{self.log()}")

    def stop(self) -> int:
        """SIGINT (Ctrl-C) and wait; the exit code."""
        if self.proc is not None and self.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.returncode = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.returncode = self.proc.wait()
            self.log_file.close()
        return self.returncode if self.returncode is not None else -1

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=5).json()


def greedy_reference(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation by Hugging Face generate(), stopping at the model's EOS like the server."""
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    tokens = out[0, len(prompt_ids) :].tolist()
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[:i]
    return tokens
