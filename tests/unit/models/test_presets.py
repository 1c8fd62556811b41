"""Model presets: the CPU-sized member of each family trains, saves and reloads with equal logits;
the shapes of public checkpoints have their published parameter counts, and equal what
`forgather convert` makes of the Hugging Face config of the same shape."""

from __future__ import annotations

import pytest
import torch

from forgather.ml.convert import registry
from forgather.ml.models.factory import build_model, model_config
from forgather.ml.models.presets import preset

pytestmark = pytest.mark.unit

# Published sizes (the model cards' safetensors parameter counts).
PUBLIC = {
    "llama3_2_1b": ("llama", 1_235_814_400),
    "mistral_7b": ("mistral", 7_248_023_552),
    "qwen3_0_6b": ("qwen3", 596_049_920),
    "gpt2_124m": ("gpt2", 124_439_808),
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_shapes_match_their_checkpoints(name):
    from transformers import AutoModelForCausalLM

    model_type, published = PUBLIC[name]
    config = model_config(preset=name)
    with torch.device("meta"):
        ours = build_model(config)
        converter = registry.for_hf(model_type)
        hf_config = converter.from_forgather_config(config, model_type)
        theirs = AutoModelForCausalLM.from_config(hf_config)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(theirs) == published
    # reading that Hugging Face config gives the preset back
    fields = converter.to_forgather_config(hf_config)
    expected = preset(name)
    for key in ("hidden_size", "num_hidden_layers", "num_key_value_heads", "head_dim", "qk_norm"):
        assert fields[key] == expected.get(key, getattr(config, key)), key
    if config.positional_encoding != "rope":
        return
    assert fields["rope_theta"] == config.rope_theta
    assert (fields["rope_scaling"] or None) == (
        {k: v for k, v in config.rope_scaling.items() if k != "type"} | {"rope_type": "llama3"}
        if config.rope_scaling
        else None
    )


@pytest.mark.parametrize(
    "name", ["tiny_llama_4m", "tiny_qwen3", "tiny_mistral", "tiny_deepnet", "tiny_gpt2"]
)
def test_cpu_sized_presets_train_save_and_reload(name, tmp_path):
    from transformers import AutoModelForCausalLM

    from forgather.ml.models.save import save_model_dir

    torch.manual_seed(0)
    model = build_model(preset=name, vocab_size=512, max_position_embeddings=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    save_model_dir(model, tmp_path / name)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / name, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


def test_an_unknown_preset_names_the_known_ones():
    with pytest.raises(KeyError, match="unknown model preset 'llama9'; known: .*qwen3_0_6b"):
        preset("llama9")
