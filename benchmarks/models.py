"""Our model versus the Hugging Face class of the same family: forward + backward, CPU or GPU.

    python benchmarks/models.py                       # CPU: llama, mistral, qwen3, gpt2; eager
    python benchmarks/models.py --families llama --rounds 9 --batch 4 --seq 256
    python benchmarks/models.py --device cuda --shape 110m --batch 8 --seq 2048 --modes eager,compiled

For each family a random Hugging Face model is built locally (no hub), converted to forgather's
model with the registered converter (the same weights), and checked to give the same logits. Then
the two run forward + backward (loss from the labels, gradients kept) on the same batch, taking
turns: after a warm-up each round times one pass of each, in alternating order, so machine load
hits both alike. On CUDA both run under bf16 autocast (fp32 weights), timed with synchronisation;
`compiled` wraps each model in torch.compile. Printed per family and mode: the median time of each
and `speed` = HF time / our time per round (median over rounds; > 1 means ours is faster; the goal
is >= 1.0). Mistral is built with a sliding window (--window) shorter than the sequence, so both
sides pay for it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {
    "tiny": dict(
        hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8
    ),
    # the GPU benchmarks' shape (docs/performance.md)
    "110m": dict(
        hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12
    ),
}
SHAPE = SHAPES["tiny"]


def hf_config(family: str, vocab: int, seq: int, window: int | None = None):
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen3Config

    common = dict(vocab_size=vocab, tie_word_embeddings=True)
    if family == "gpt2":
        return GPT2Config(
            n_embd=SHAPE["hidden_size"],
            n_inner=4 * SHAPE["hidden_size"],
            n_layer=SHAPE["num_hidden_layers"],
            n_head=SHAPE["num_attention_heads"],
            n_positions=seq,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
            **common,
        )
    kv_heads = SHAPE["num_attention_heads"] // 2
    shape = dict(SHAPE, max_position_embeddings=seq, num_key_value_heads=kv_heads, **common)
    if family == "llama":
        return LlamaConfig(**shape)
    if family == "mistral":
        return MistralConfig(sliding_window=window, **shape)
    if family == "qwen3":
        return Qwen3Config(head_dim=SHAPE["hidden_size"] // SHAPE["num_attention_heads"], **shape)
    raise ValueError(f"unknown family {family!r}")


def pair(family: str, vocab: int, seq: int, device: str = "cpu", window: int | None = None):
    """(HF model, our model with the same weights), both in train mode on ``device``."""
    from transformers import AutoModelForCausalLM

    from forgather.ml.convert import registry
    from forgather.ml.models.transformer import ForgatherConfig, ForgatherForCausalLM

    torch.manual_seed(0)
    config = hf_config(family, vocab, seq, window)
    hf = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").float()
    converter = registry.for_hf(config.model_type)
    ours = ForgatherForCausalLM(ForgatherConfig(**converter.to_forgather_config(config))).float()
    state = converter.to_forgather_state(dict(hf.state_dict()))
    missing, unexpected = ours.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if ours.config.tie_word_embeddings else set()
    assert set(missing) <= tied and not unexpected, (missing, unexpected)
    return hf.to(device).train(), ours.to(device).train()


def step(model, ids) -> None:
    with torch.autocast("cuda", torch.bfloat16, enabled=ids.is_cuda):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    model.zero_grad(set_to_none=True)


def timed(model, ids) -> float:
    if ids.is_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    step(model, ids)
    if ids.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    global SHAPE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="llama,mistral,qwen3,gpt2")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default="eager", help="eager and/or compiled, comma-separated")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--window", type=int, help="Mistral's sliding window (default seq / 2)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    options = parser.parse_args()
    SHAPE = SHAPES[options.shape]
    window = options.window or options.seq // 2
    cuda = options.device.startswith("cuda")
    where = torch.cuda.get_device_name() if cuda else f"{torch.get_num_threads()} CPU threads"
    print(
        f"torch {torch.__version__}, {where}; hidden {SHAPE['hidden_size']}, "
        f"{SHAPE['num_hidden_layers']} layers, vocab {options.vocab}, batch {options.batch} x "
        f"{options.seq}, {'bf16 autocast' if cuda else 'fp32'}, forward + backward, Mistral "
        f"window {window}"
    )
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, options.vocab, (options.batch, options.seq), generator=generator)
    ids = ids.to(options.device)
    for family in options.families.split(","):
        for mode in options.modes.split(","):
            hf, ours = pair(family, options.vocab, options.seq, options.device, window)
            with torch.no_grad():
                difference = (hf(ids[:1]).logits - ours(ids[:1]).logits).abs().max().item()
            if mode == "compiled":
                hf, ours = torch.compile(hf), torch.compile(ours)
            for _ in range(options.warmup):
                step(hf, ids)
                step(ours, ids)
            times: dict[str, list[float]] = {"hf": [], "ours": []}
            for round_index in range(options.rounds):
                order = (("hf", hf), ("ours", ours))
                for name, model in order if round_index % 2 == 0 else reversed(order):
                    times[name].append(timed(model, ids))
            speed = statistics.median(
                h / o for h, o in zip(times["hf"], times["ours"], strict=True)
            )
            print(
                f"  {family:8s} {mode:8s} HF {statistics.median(times['hf']) * 1e3:7.1f} ms   "
                f"ours {statistics.median(times['ours']) * 1e3:7.1f} ms   speed {speed:.2f}x   "
                f"(fp32 logits differ by {difference:.1e})",
                flush=True,
            )
            del hf, ours
            if cuda:
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
