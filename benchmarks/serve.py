"""forgather serve vs `transformers serve --continuous-batching`, side by side, same model and requests.

    python benchmarks/serve.py                          # CPU, tiny_llama's shape, concurrency 1, 8, 32
    python benchmarks/serve.py --device cuda --shape 110m --requests 64 --prompt-tokens 128 --max-tokens 128

Both servers serve one plain ``LlamaForCausalLM`` directory (random weights of the chosen shape, with
the byte-level BPE tokenizer forgather trains on its embedded corpus): ``transformers serve`` loads
only classes transformers itself exports, so a forgather remote-code model would not load there.
Both servers are started and warmed up, then each round sends the same request set to each server
in turn (alternating which goes first) at each concurrency: streaming ``/v1/completions``, greedy, a
fixed number of new tokens (the model has no EOS token, so every request runs to ``max_tokens``);
each round also times in-process ``model.generate()`` at batch 1, the single-stream reference.
Printed: output tokens/s (all completion tokens over the wall time of the set) and p50/p99 time to
first token, per round and as medians over the rounds, then the ratios the goals are stated in.
``--json FILE`` keeps the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

SHAPES = {
    # tiny_llama's shape (forgather's preset tiny_llama_4m)
    "tiny": dict(
        hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4
    ),
    # a GPT-2-small-sized Llama (~110M with a 32k vocabulary; ~96M with the 4k one used here)
    "110m": dict(
        hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12
    ),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_model(directory: Path, shape: str, max_len: int) -> None:
    """A random LlamaForCausalLM of ``shape`` with forgather's Austen tokenizer, saved to ``directory``."""
    import torch
    from platformdirs import user_cache_dir
    from transformers import LlamaConfig, LlamaForCausalLM

    from forgather.ml.data.corpus import embedded_texts
    from forgather.ml.data.tokenizer import load_or_train_tokenizer

    tokenizer = load_or_train_tokenizer(
        {"name": "austen_bpe", "vocab_size": 4096, "model_max_length": max_len},
        embedded_texts("train"),
        Path(user_cache_dir("forgather")) / "tokenizers",
    )
    dims = SHAPES[shape]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=dims["num_attention_heads"],
        max_position_embeddings=max_len,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=None,  # no EOS: every request generates exactly max_tokens
        pad_token_id=tokenizer.pad_token_id,
        **dims,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = None
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def make_prompts(model_dir: Path, count: int, tokens: int) -> list[str]:
    """``count`` passages of the validation text, each about ``tokens`` tokens long."""
    from transformers import AutoTokenizer

    from forgather.ml.data.corpus import embedded_texts

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = " ".join(embedded_texts("validation"))
    ids = tokenizer(text, verbose=False)["input_ids"]
    stride = max(tokens, (len(ids) - tokens) // count)
    return [tokenizer.decode(ids[i * stride : i * stride + tokens]) for i in range(count)]


class ServerProcess:
    """A server subprocess, waited for on /health, stopped with SIGINT (then SIGKILL)."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path):
        self.name, self.argv, self.port, self.log = name, argv, port, log
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> ServerProcess:
        self.log_file = self.log.open("w")
        self.proc = subprocess.Popen(
            self.argv, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not answer /health in 300 s; see {self.log}")

    def __exit__(self, *exc: object) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log_file.close()


async def one_request(
    client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int
) -> tuple[float | None, int, float]:
    """(time to first token, completion tokens, total seconds) of one streaming completion."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft, chunks, usage = None, 0, None
    async with client.stream("POST", f"{url}/v1/completions", json=body) as reply:
        if reply.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {reply.status_code}: {(await reply.aread())[:300]!r}")
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                usage = data["usage"]
            for choice in data.get("choices") or []:
                if choice.get("text"):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - start
    tokens = usage["completion_tokens"] if usage else chunks
    return ttft, tokens, time.perf_counter() - start


async def run_set(
    url: str, model: str, prompts: list[str], max_tokens: int, concurrency: int
) -> dict:
    limits = httpx.Limits(
        max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4
    )
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def guarded(prompt: str):
            async with gate:
                return await one_request(client, url, model, prompt, max_tokens)

        start = time.perf_counter()
        results = await asyncio.gather(*(guarded(p) for p in prompts))
        wall = time.perf_counter() - start
    ttfts = sorted(r[0] for r in results if r[0] is not None)
    tokens = sum(r[1] for r in results)
    return {
        "concurrency": concurrency,
        "requests": len(prompts),
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_p99_ms": 1000 * ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
    }


class Generator:
    """In-process ``model.generate()`` at batch 1 (greedy), the single-stream reference."""

    def __init__(self, model_dir: Path, device: str, dtype: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        kwargs = {} if dtype == "auto" else {"dtype": getattr(torch, dtype)}
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs).to(device).eval()

    def tokens_per_s(self, prompts: list[str], max_tokens: int) -> float:
        options = dict(max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
        with self.torch.inference_mode():
            encoded = self.tokenizer(prompts[0], return_tensors="pt").to(self.device)
            self.model.generate(**encoded, **options)  # warm-up
            tokens, start = 0, time.perf_counter()
            for prompt in prompts:
                encoded = self.tokenizer(prompt, return_tensors="pt").to(self.device)
                out = self.model.generate(**encoded, **options)
                tokens += out.shape[1] - encoded["input_ids"].shape[1]
            if self.device.startswith("cuda"):
                self.torch.cuda.synchronize()
        return tokens / (time.perf_counter() - start)


def server_argv(
    name: str, model_dir: Path, port: int, device: str, batch: int, dtype: str
) -> list[str]:
    if name == "forgather":
        return [
            sys.executable, "-m", "forgather.cli.main", "serve", str(model_dir), "--port", str(port),
            "--device", device, "--dtype", dtype, "--served-model-name", "bench",
            "--max-batch-size", str(batch),
        ]  # fmt: skip
    argv = [
        sys.executable, "-m", "transformers.cli.transformers", "serve", str(model_dir),
        "--continuous-batching", "--device", device, "--dtype", dtype, "--port", str(port),
        "--host", "127.0.0.1", "--log-level", "warning",
    ]  # fmt: skip
    if device.startswith("cuda"):  # leave GPU memory to the other server and generate()
        argv += ["--cb-max-memory-percent", "0.3"]
    return argv


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--model-dir", type=Path, help="Use this plain Llama directory instead.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 (both servers).")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=90)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--servers", default="forgather,transformers")
    parser.add_argument("--generate-prompts", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="Repeat every measurement; medians.")
    parser.add_argument("--json", type=Path, help="Write the results here.")
    parser.add_argument(
        "--logs", type=Path, help="Directory for the servers' logs (default: temp)."
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    logs = args.logs or work
    logs.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir or work / f"llama-{args.shape}"
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.model_dir is None:
        print(f"building a random LlamaForCausalLM ({args.shape}) in {model_dir}", flush=True)
        build_model(model_dir, args.shape, max(2048, args.prompt_tokens + args.max_tokens + 64))
    prompts = make_prompts(model_dir, args.requests, args.prompt_tokens)

    # Both servers stay up (idle between sets); each round measures every server at every
    # concurrency, alternating which goes first, plus generate(): the machine's speed drifts, so
    # only figures taken side by side compare, and medians over the rounds are reported.
    names = args.servers.split(",")
    models = {name: ("bench" if name == "forgather" else str(model_dir)) for name in names}
    generator = Generator(model_dir, args.device, args.dtype)
    rows: dict[str, dict[int, list[dict]]] = {
        name: {level: [] for level in levels} for name in names
    }
    generate_rates: list[float] = []
    with contextlib.ExitStack() as stack:
        servers = {}
        for name in list(names):
            port = free_port()
            argv = server_argv(name, model_dir, port, args.device, max(levels), args.dtype)
            print(f"{name}: {' '.join(argv)}", flush=True)
            try:
                server = stack.enter_context(ServerProcess(name, argv, port, logs / f"{name}.log"))
                asyncio.run(run_set(server.url, models[name], prompts[:4], args.max_tokens, 2))
            except Exception as error:  # report the others rather than nothing
                log = (logs / f"{name}.log").read_text(errors="replace")[-1500:]
                print(f"{name} left out: {error}\n{log}", flush=True)
                names.remove(name)
                continue
            servers[name] = server
        for round_index in range(args.rounds):
            order = names if round_index % 2 == 0 else names[::-1]
            for level in levels:
                for name in order:
                    row = asyncio.run(
                        run_set(servers[name].url, models[name], prompts, args.max_tokens, level)
                    )
                    rows[name][level].append(row)
                    print(
                        f"  round {round_index + 1} {name:>12} concurrency {level:>3}: "
                        f"{row['tokens_per_s']:8.1f} tok/s   TTFT p50 {row['ttft_p50_ms']:7.1f} ms  "
                        f"p99 {row['ttft_p99_ms']:7.1f} ms",
                        flush=True,
                    )
            rate = generator.tokens_per_s(prompts[: args.generate_prompts], args.max_tokens)
            generate_rates.append(rate)
            print(f"  round {round_index + 1} in-process generate(), batch 1: {rate:.1f} tok/s")

    def median_row(samples: list[dict]) -> dict:
        return {
            key: statistics.median([r[key] for r in samples])
            for key in ("tokens_per_s", "ttft_p50_ms", "ttft_p99_ms")
        } | {"concurrency": samples[0]["concurrency"], "rounds": len(samples)}

    results = {name: [median_row(rows[name][level]) for level in levels] for name in names}
    generate_rate = statistics.median(generate_rates)
    print(f"\nmedians over {args.rounds} round(s), {args.device}:")
    for name in names:
        for row in results[name]:
            print(
                f"  {name:>12} concurrency {row['concurrency']:>3}: {row['tokens_per_s']:8.1f} tok/s"
                f"   TTFT p50 {row['ttft_p50_ms']:7.1f} ms  p99 {row['ttft_p99_ms']:7.1f} ms"
            )
    print(f"  in-process generate(), batch 1: {generate_rate:.1f} tok/s")

    summary: dict[str, object] = {"generate_tokens_per_s": generate_rate, "servers": results}
    if "forgather" in results:
        ours = {r["concurrency"]: r for r in results["forgather"]}
        if 1 in ours:
            ratio = ours[1]["tokens_per_s"] / generate_rate
            summary["forgather_c1_vs_generate"] = ratio
            print(f"forgather at concurrency 1 / generate(): {ratio:.2f} (goal >= 0.90)")
        if "transformers" in results:
            for row in results["transformers"]:
                level = row["concurrency"]
                mine = ours[level]
                speed = mine["tokens_per_s"] / row["tokens_per_s"]
                ttft = mine["ttft_p50_ms"] / row["ttft_p50_ms"]
                summary[f"c{level}_tokens_ratio"] = speed
                summary[f"c{level}_ttft_p50_ratio"] = ttft
                print(
                    f"concurrency {level:>3}: forgather/transformers tokens/s {speed:.2f}, "
                    f"p50 TTFT {ttft:.2f} (goal at 32: >= 1.5 and <= 1.0)"
                )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
