"""`forgather serve` end to end: a real server process, the official `openai` client, raw HTTP for
the bad inputs, a forgather-trained model, a plain `LlamaForCausalLM` directory, and a checkpoint."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import assert_one_line_error
from .serving import Server, free_port, greedy_reference

pytestmark = pytest.mark.slow

PROMPTS = [
    "It is a truth universally acknowledged",
    "Elizabeth",
    "Mr. Darcy",
    "She was",
    "The evening",
]


def corpus_prompts(count: int) -> list[str]:
    """``count`` different short passages of the validation text."""
    from forgather.ml.data.corpus import load_embedded_corpus

    words = " ".join(load_embedded_corpus("validation")["text"][:3]).split()
    return [" ".join(words[i * 7 : i * 7 + 3 + i % 9]) for i in range(count)]


@pytest.fixture(scope="module")
def model_dir(trained) -> Path:
    return trained[0]


@pytest.fixture(scope="module")
def plain_llama_dir(model_dir, tmp_path_factory) -> Path:
    """A random `LlamaForCausalLM` (no remote code) with the trained model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    directory = tmp_path_factory.mktemp("plain") / "llama"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def start_server(model: Path, env, tmp_path_factory, *args: str, scheme="http", verify=True):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    return Server(model, env, log, *args, scheme=scheme).start(verify=verify)


@pytest.fixture(scope="module")
def server(model_dir, e2e_env, tmp_path_factory):
    running = start_server(model_dir, e2e_env, tmp_path_factory, "--max-batch-size", "32")
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference_model(model_dir):
    """The trained model and tokenizer, loaded in this process the way a user would."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def greedy_text(reference_model, prompt: str, max_tokens: int) -> str:
    model, tokenizer = reference_model
    ids = tokenizer(prompt)["input_ids"]
    return tokenizer.decode(
        greedy_reference(model, tokenizer, ids, max_tokens), skip_special_tokens=True
    )


# ---------------------------------------------------------------- the API with the openai client


def test_models_lists_the_served_model(client, model_dir):
    (entry,) = client.models.list().data
    assert entry.id == model_dir.name
    assert entry.owned_by == "forgather"


def test_greedy_completion_equals_generate(client, model_dir, reference_model):
    for prompt in PROMPTS:
        reply = client.completions.create(
            model=model_dir.name, prompt=prompt, max_tokens=20, temperature=0
        )
        assert reply.choices[0].text == greedy_text(reference_model, prompt, 20), prompt
        assert reply.choices[0].finish_reason in ("length", "stop")
        assert reply.usage.completion_tokens <= 20
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streamed_completion_equals_the_whole_one(client, model_dir):
    kwargs = dict(model=model_dir.name, prompt=PROMPTS[0], max_tokens=24, temperature=0)
    whole = client.completions.create(**kwargs)
    chunks = list(
        client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24


def test_32_concurrent_streams_each_equal_their_greedy_output(server, model_dir, reference_model):
    prompts = corpus_prompts(32)
    expected = [greedy_text(reference_model, p, 24) for p in prompts]

    async def one(client: openai.AsyncOpenAI, prompt: str) -> str:
        stream = await client.completions.create(
            model=model_dir.name, prompt=prompt, max_tokens=24, temperature=0, stream=True
        )
        return "".join([c.choices[0].text async for c in stream])

    async def all_at_once() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        async with client:
            return await asyncio.gather(*(one(client, p) for p in prompts))

    assert asyncio.run(all_at_once()) == expected


def test_chat_uses_chatml_and_stops_at_its_end_marker(client, model_dir, reference_model):
    model, tokenizer = reference_model
    messages = [
        {"role": "system", "content": "You are Miss Bennet."},
        {"role": "user", "content": "How do you do?"},
    ]
    reply = client.chat.completions.create(
        model=model_dir.name, messages=messages, max_tokens=30, temperature=0
    )
    rendered = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    ids = tokenizer(rendered + "<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    expected = tokenizer.decode(
        greedy_reference(model, tokenizer, ids, 30), skip_special_tokens=True
    )
    expected = expected.split("<|im_end|>")[0]
    message = reply.choices[0].message
    assert message.role == "assistant"
    assert message.content == expected
    assert reply.usage.prompt_tokens == len(ids)

    chunks = list(
        client.chat.completions.create(
            model=model_dir.name, messages=messages, max_tokens=30, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason


def test_stop_strings_end_the_text_before_them(client, model_dir):
    kwargs = dict(model=model_dir.name, prompt=PROMPTS[0], max_tokens=30, temperature=0)
    full = client.completions.create(**kwargs).choices[0].text
    stop = full[8:11]
    cut = full[: full.index(stop)]
    reply = client.completions.create(**kwargs, stop=[stop, "never appears"])
    assert (reply.choices[0].text, reply.choices[0].finish_reason) == (cut, "stop")
    streamed = client.completions.create(**kwargs, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut


def test_n_choices_and_seeds(client, model_dir):
    kwargs = dict(
        model=model_dir.name, prompt=PROMPTS[1], max_tokens=16, temperature=1.0, n=3, seed=42
    )
    first = client.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.text for c in first.choices]
    assert len(set(texts)) > 1  # the choices sample independently
    assert [c.text for c in client.completions.create(**kwargs).choices] == texts
    other = client.completions.create(**{**kwargs, "seed": 43})
    assert [c.text for c in other.choices] != texts
    chat = client.chat.completions.create(
        model=model_dir.name,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=8,
        n=2,
        stream=True,
    )
    assert {c.choices[0].index for c in chat if c.choices} == {0, 1}


def test_logprobs_in_completions_and_chat(client, model_dir):
    reply = client.completions.create(
        model=model_dir.name, prompt=PROMPTS[0], max_tokens=5, temperature=0, logprobs=2
    )
    lp = reply.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == reply.choices[0].text
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert chosen <= 0 and len(top) == 2
        assert chosen == pytest.approx(max(top.values()), abs=1e-5)  # greedy takes the best

    chat = client.chat.completions.create(
        model=model_dir.name,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(len(entry.top_logprobs) == 3 and entry.logprob <= 0 for entry in content)


def test_a_plain_llama_directory_is_served(plain_llama_dir, e2e_env, tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(plain_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(plain_llama_dir)
    server = start_server(
        plain_llama_dir, e2e_env, tmp_path_factory, "--served-model-name", "llama"
    )
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0)
        for prompt in PROMPTS[:3]:
            ids = tokenizer(prompt)["input_ids"]
            with torch.no_grad():
                expected = tokenizer.decode(
                    greedy_reference(model, tokenizer, ids, 16), skip_special_tokens=True
                )
            reply = client.completions.create(
                model="llama", prompt=prompt, max_tokens=16, temperature=0
            )
            assert reply.choices[0].text == expected
    finally:
        assert server.stop() == 0, server.log()


def test_a_checkpoint_is_served_with_its_own_weights(model_dir, e2e_env, tmp_path_factory):
    from forgather.ml.models.loading import load_causal_lm

    checkpoint = model_dir / "checkpoints" / "checkpoint-20"
    model, tokenizer, _ = load_causal_lm(checkpoint)
    server = start_server(checkpoint, e2e_env, tmp_path_factory)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0)
        ids = tokenizer(PROMPTS[0])["input_ids"]
        expected = tokenizer.decode(
            greedy_reference(model, tokenizer, ids, 16), skip_special_tokens=True
        )
        reply = client.completions.create(
            model=model_dir.name, prompt=PROMPTS[0], max_tokens=16, temperature=0
        )
        assert reply.choices[0].text == expected
    finally:
        assert server.stop() == 0, server.log()


# ---------------------------------------------------------------- bad input and faults


def post(server, path: str, body, **kwargs) -> httpx.Response:
    content = body if isinstance(body, str | bytes) else json.dumps(body)
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(f"{server.url}{path}", content=content, headers=headers, timeout=30, **kwargs)


def error_of(reply: httpx.Response) -> dict:
    body = reply.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.mark.parametrize(
    "body, status, param, needle",
    [
        ('{"prompt": "x",', 400, None, "malformed JSON"),
        ("[1, 2]", 400, None, "JSON object"),
        ({"prompt": "x", "max_tokens": "ten"}, 400, "max_tokens", "integer"),
        ({"prompt": 5}, 400, "prompt", "prompt must be a string"),
        ({"prompt": "x", "temperature": 5}, 400, "temperature", "less than or equal to 2"),
        ({"prompt": "x", "top_p": 0}, 400, "top_p", "greater than 0"),
        ({"prompt": "x", "n": 0}, 400, "n", "greater than or equal to 1"),
        ({"prompt": "x", "n": 64}, 400, "n", "--max-batch-size 32"),
        ({"prompt": "x", "logprobs": 50}, 400, "logprobs", "less than or equal to 20"),
        ({"prompt": "x", "best_of": 3}, 400, "best_of", "not supported"),
        ({"prompt": "x", "tempurature": 0.5}, 400, "tempurature", "Unrecognized request argument"),
        ({"prompt": "x", "logit_bias": {"99999": 5}}, 400, "logit_bias", "outside the vocabulary"),
        ({"prompt": [123456]}, 400, "prompt", "outside the vocabulary"),
        ({"prompt": "x", "model": "gpt-4"}, 404, "model", "does not exist"),
    ],
)
def test_bad_completion_requests_get_openai_errors(server, body, status, param, needle):
    reply = post(server, "/v1/completions", body)
    assert reply.status_code == status, reply.text
    error = error_of(reply)
    assert error["param"] == param
    assert needle in error["message"], error["message"]
    assert error["type"] == "invalid_request_error"


def test_bad_chat_requests_get_openai_errors(server):
    cases = [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
            "tools",
        ),
        (
            {
                "messages": [{"role": "user", "content": "hi"}],
                "response_format": {"type": "json_object"},
            },
            "response_format",
        ),
    ]
    for body, param in cases:
        reply = post(server, "/v1/chat/completions", body)
        assert reply.status_code == 400, reply.text
        assert error_of(reply)["param"] == param


def test_a_prompt_longer_than_the_context_names_both_lengths(server):
    reply = post(server, "/v1/completions", {"prompt": "word " * 400, "max_tokens": 4})
    assert reply.status_code == 400
    error = error_of(reply)
    assert error["code"] == "context_length_exceeded"
    match = re.search(
        r"the prompt is (\d+) tokens but the model's context is (\d+) tokens", error["message"]
    )
    assert match and int(match[1]) > int(match[2]) == 256, error["message"]
    too_many = post(server, "/v1/completions", {"prompt": "word", "max_tokens": 300})
    assert "max_tokens is 300" in error_of(too_many)["message"]


def test_unknown_routes_and_methods_answer_in_the_same_format(server):
    assert error_of(httpx.get(f"{server.url}/v1/engines", timeout=10))["message"].endswith(
        "Not Found"
    )
    assert httpx.get(f"{server.url}/v1/completions", timeout=10).status_code == 405


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server, model_dir):
    body = {
        "model": model_dir.name,
        "prompt": PROMPTS[0],
        # Sixteen long sequences, so the request is still generating when the client leaves
        # (a single short one can finish on a fast engine before the client's next read).
        "n": 16,
        "max_tokens": 240,
        "temperature": 1.0,
        "seed": 0,
        "stream": True,
    }
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", f"{server.url}/v1/completions", json=body) as reply,
    ):
        lines = reply.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
        assert first["choices"][0]["finish_reason"] is None
    deadline = time.monotonic() + 5
    while server.health()["running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.health() | {"model": None} == {
        "status": "ok", "model": None, "running": 0, "prefilling": 0, "waiting": 0, "free_slots": 32,
    }  # fmt: skip
    # It was logged as a cancelled request, and the server keeps serving.
    assert wait_for_log(server, r"completion 499 .* finish=cancelled")
    ok = post(server, "/v1/completions", {"prompt": "Hello", "max_tokens": 3})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3


def wait_for_log(server, pattern: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, server.log()):
            return True
        time.sleep(0.05)
    return False


def test_request_log_has_ids_lengths_and_timings_but_no_prompt_text(server, client, model_dir):
    secret = "Pemberley woods are lovely"
    reply = client.completions.create(model=model_dir.name, prompt=secret, max_tokens=2)
    assert wait_for_log(
        server, rf"{reply.id} completion 200 prompt=\d+ completion=2 n=1 ttft=[\d.]+ms"
    )
    assert secret not in server.log()


# ---------------------------------------------------------------- keys and TLS


@pytest.fixture(scope="module")
def tls_dir(forgather, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    run = forgather("tls", "init", "--dir", directory)
    assert run.returncode == 0, run.describe()
    assert f"--cacert {directory / 'ca.crt'}" in run.stdout
    assert f"SSL_CERT_FILE={directory / 'ca.crt'}" in run.stdout
    assert (directory / "server.key").stat().st_mode & 0o077 == 0
    return directory


@pytest.fixture(scope="module")
def secure_server(model_dir, e2e_env, tmp_path_factory, tls_dir):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text("# accepted keys\nkey-one\nkey-two\n")
    running = start_server(
        model_dir, e2e_env, tmp_path_factory,
        "--api-key-file", str(keys), "--tls-cert", str(tls_dir / "server.crt"),
        "--tls-key", str(tls_dir / "server.key"), "--log-prompts", "--max-batch-size", "2",
        scheme="https", verify=trusting(tls_dir),
    )  # fmt: skip
    yield running
    assert running.stop() == 0, running.log()


def trusting(tls_dir: Path) -> ssl.SSLContext:
    """A client TLS context that trusts the CA `forgather tls init` made."""
    return ssl.create_default_context(cafile=str(tls_dir / "ca.crt"))


def test_tls_with_the_ca_from_tls_init_and_api_keys(secure_server, tls_dir, model_dir):
    ca = trusting(tls_dir)
    url = secure_server.url
    with pytest.raises(httpx.ConnectError):  # the CA is not trusted by default
        httpx.get(f"{url}/health", timeout=10)
    assert httpx.get(f"{url}/health", timeout=10, verify=ca).status_code == 200  # no key needed
    missing = httpx.get(f"{url}/v1/models", timeout=10, verify=ca)
    assert missing.status_code == 401 and error_of(missing)["code"] == "invalid_api_key"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer key-three"}, verify=ca)
    assert wrong.status_code == 401 and "Incorrect API key" in error_of(wrong)["message"]
    for key in ("key-one", "key-two"):
        client = openai.OpenAI(
            base_url=f"{url}/v1", api_key=key, max_retries=0, http_client=httpx.Client(verify=ca)
        )
        reply = client.completions.create(
            model=model_dir.name, prompt="Lady Catherine", max_tokens=3
        )
        assert reply.usage.completion_tokens == 3


def test_log_prompts_puts_the_prompt_in_the_log(secure_server, tls_dir, model_dir):
    client = openai.OpenAI(
        base_url=f"{secure_server.url}/v1",
        api_key="key-one",
        max_retries=0,
        http_client=httpx.Client(verify=trusting(tls_dir)),
    )
    client.completions.create(model=model_dir.name, prompt="Netherfield Park is let", max_tokens=2)
    assert wait_for_log(secure_server, r"prompt_text='\"Netherfield Park is let\"'")


# ---------------------------------------------------------------- command-line errors


def test_serve_errors_are_one_line(forgather, model_dir, tmp_path):
    missing = forgather("serve", tmp_path / "nothing")
    assert_one_line_error(missing, "does not exist")
    assert_one_line_error(forgather("serve", model_dir, "--tls-cert", "a.pem"), "--tls-key")
    keyless = tmp_path / "empty.txt"
    keyless.write_text("\n# none\n")
    assert_one_line_error(forgather("serve", model_dir, "--api-key-file", keyless), "no key")
    with socket_bound() as port:
        assert_one_line_error(
            forgather("serve", model_dir, "--port", port), f"--port {port}", "in use"
        )
    bad_len = forgather("serve", model_dir, "--max-model-len", "100000", "--port", free_port())
    assert_one_line_error(bad_len, "--max-model-len 100000 exceeds the model's context length 256")


class socket_bound:
    """A port held open for the duration of the block."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        return self.sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_serve_help_lists_the_flags(forgather):
    run = forgather("serve", "--help")
    assert run.returncode == 0
    for flag in (
        "--host", "--port", "--served-model-name", "--dtype", "--device", "--max-batch-size",
        "--max-model-len", "--chat-template", "--api-key", "--api-key-file", "--tls-cert",
        "--tls-key", "--log-prompts",
    ):  # fmt: skip
        assert flag in run.stdout, flag


def test_sigterm_stops_the_server_and_its_engine_process(model_dir, e2e_env, tmp_path_factory):
    import signal

    server = start_server(model_dir, e2e_env, tmp_path_factory)
    children = subprocess.run(
        ["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True
    ).stdout.split()
    assert children, "the engine runs in a child process"
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0, server.log()
    server.log_file.close()

    def gone(pid: str) -> bool:
        status = Path(f"/proc/{pid}/status")
        try:
            return "zombie" in status.read_text()
        except OSError:
            return True

    # The engine is stopped before the server exits; helpers such as multiprocessing's resource
    # tracker leave on their own a moment after (when their pipe closes): allow them a few seconds.
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in children if not gone(pid)] == []
    assert "stopped" in server.log()
