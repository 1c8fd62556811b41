"""Chat fine-tuning data: conversation shapes, the chat template, labels on the assistant's tokens only
(checked token by token), packing that carries the labels, and a model grown for the ChatML markers."""

from __future__ import annotations

import copy

import pytest

from forgather.ml.data.chat import (
    CHATML_TEMPLATE,
    IGNORE_INDEX,
    chat_tokenize_fn,
    chat_tokenizer,
    conversation_messages,
    tokenize_conversation,
)
from forgather.ml.data.errors import DatasetError

pytestmark = pytest.mark.unit

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Who lives at Hartfield?"},
    {"role": "assistant", "content": "Emma Woodhouse and her father."},
    {"role": "user", "content": "And at Donwell Abbey?"},
    {"role": "assistant", "content": "Mr. Knightley."},
]


@pytest.fixture
def chat_tok(tokenizer):
    return chat_tokenizer(copy.deepcopy(tokenizer))


def test_chat_tokenizer_adds_the_chatml_markers_whole_and_sets_the_template(chat_tok, tokenizer):
    assert chat_tok.chat_template == CHATML_TEMPLATE
    assert len(chat_tok) == len(tokenizer) + 2
    for marker in ("<|im_start|>", "<|im_end|>"):
        assert len(chat_tok(marker, add_special_tokens=False)["input_ids"]) == 1
    again = chat_tokenizer(chat_tok)  # idempotent
    assert len(again) == len(tokenizer) + 2


def test_labels_are_on_assistant_tokens_only_token_by_token(chat_tok):
    ids, labels = tokenize_conversation(chat_tok, CONVERSATION, CHATML_TEMPLATE)
    text = chat_tok.apply_chat_template(CONVERSATION, chat_template=CHATML_TEMPLATE, tokenize=False)
    assert chat_tok.decode(ids) == text
    # Walk the tokens: a token is labelled exactly when it lies in an assistant turn's content or
    # its closing "<|im_end|>\n"; the role header "<|im_start|>assistant\n" is not.
    expected_spans = []
    for message in CONVERSATION:
        if message["role"] == "assistant":
            piece = message["content"] + "<|im_end|>\n"
            start = text.index("<|im_start|>assistant\n" + piece) + len("<|im_start|>assistant\n")
            expected_spans.append((start, start + len(piece)))
    offsets = chat_tok(text, add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    assert len(offsets) == len(ids)
    for token, label, (start, end) in zip(ids, labels, offsets, strict=True):
        inside = any(lo <= start and end <= hi for lo, hi in expected_spans)
        assert label == (token if inside else IGNORE_INDEX), chat_tok.decode([token])
    answers = chat_tok.decode([t for t in labels if t != IGNORE_INDEX])
    assert answers == "Emma Woodhouse and her father.<|im_end|>\nMr. Knightley.<|im_end|>\n"


@pytest.mark.parametrize(
    "row,expected",
    [
        (
            {"prompt": "Hi", "response": "Hello.", "system": "Be kind."},
            [("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello.")],
        ),
        (
            {"instruction": "Translate", "input": "chat", "output": "cat"},
            [("user", "Translate\n\nchat"), ("assistant", "cat")],
        ),
        (
            {"instruction": "Say hi", "input": "", "output": "hi"},
            [("user", "Say hi"), ("assistant", "hi")],
        ),
        ({"messages": CONVERSATION[1:3]}, [(m["role"], m["content"]) for m in CONVERSATION[1:3]]),
    ],
)
def test_conversation_shapes(row, expected):
    assert [(m["role"], m["content"]) for m in conversation_messages(row)] == expected


@pytest.mark.parametrize(
    "row,message",
    [
        ({"text": "plain"}, "conversation 3: expected messages, prompt \\+ response"),
        ({"messages": []}, "conversation 3: messages must be a non-empty list"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "role 'bot'"),
        ({"messages": [{"content": "x"}]}, "message 0 needs a role and a content"),
    ],
)
def test_bad_conversations_are_named(row, message):
    with pytest.raises(DatasetError, match=message):
        conversation_messages(row, 3)


def rows_of(batch: dict) -> list[dict]:
    return [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]


def test_packing_keeps_each_label_with_its_token(chat_tok):
    conversations = [
        [
            {"role": "user", "content": f"Question {i}?"},
            {"role": "assistant", "content": "Yes. " * i},
        ]
        for i in range(1, 9)
    ]
    batch = {"messages": conversations}
    single = chat_tokenize_fn(batch, chat_tok, max_length=64)
    packed = chat_tokenize_fn(batch, chat_tok, max_length=64, packed=True)
    assert len(single["input_ids"]) == 8 and len(packed["input_ids"]) < 8
    assert sum(len(s) for s in packed["document_starts"]) == 8
    for row in rows_of(packed):
        assert len(row["input_ids"]) == len(row["labels"]) <= 64
        pairs = zip(row["input_ids"], row["labels"], strict=True)
        assert all(label in (token, IGNORE_INDEX) for token, label in pairs)

    def labelled(result):  # every labelled token of every row, as a sorted multiset
        return sorted(
            label for labels in result["labels"] for label in labels if label != IGNORE_INDEX
        )

    assert labelled(packed) == labelled(single)


def test_a_conversation_cut_before_its_answer_is_dropped(chat_tok):
    long_question = [
        {"role": "user", "content": "word " * 80},
        {"role": "assistant", "content": "Short."},
    ]
    out = chat_tokenize_fn({"messages": [long_question, CONVERSATION]}, chat_tok, max_length=48)
    assert len(out["input_ids"]) == 1  # the first had no assistant token left within 48
    assert any(label != IGNORE_INDEX for label in out["labels"][0])


def test_a_template_that_is_not_prefix_stable_is_refused(chat_tok):
    reversed_template = "{% for m in messages | reverse %}{{ m['content'] }}|{% endfor %}"
    with pytest.raises(DatasetError, match="prefix-stable template"):
        tokenize_conversation(chat_tok, CONVERSATION, reversed_template)


def test_the_collator_keeps_the_assistant_only_labels(chat_tok):
    from forgather.ml.data.collator import DataCollatorForCausalLM

    out = chat_tokenize_fn({"messages": [CONVERSATION, CONVERSATION[:3]]}, chat_tok, max_length=96)
    batch = DataCollatorForCausalLM(chat_tok)(rows_of(out))
    for row, labels in zip(rows_of(out), batch["labels"].tolist(), strict=True):
        assert labels[: len(row["labels"])] == row["labels"]
        assert set(labels[len(row["labels"]) :]) <= {IGNORE_INDEX}


def test_model_with_vocab_grows_rows_for_added_tokens_and_stops_at_im_end(chat_tok, tokenizer):
    import torch

    from forgather.ml.models.factory import build_model
    from forgather.ml.models.vocab import model_with_vocab

    def model_init():
        torch.manual_seed(0)
        return build_model(
            preset="tiny_llama_4m", vocab_size=len(tokenizer), hidden_size=32,
            intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, eos_token_id=tokenizer.eos_token_id,
        )  # fmt: skip

    before = model_init().get_input_embeddings().weight.detach().clone()
    model = model_with_vocab(model_init, chat_tok, generation_eos=["<|im_end|>"])
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] >= len(chat_tok)
    assert torch.equal(weight[: len(tokenizer)], before)
    assert torch.allclose(weight[len(tokenizer)], before.mean(0))
    im_end = chat_tok.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id, im_end]


def test_the_embedded_conversation_set_rebuilds_byte_for_byte_and_parses(tmp_path):
    from forgather.ml.data.corpora import build_conversations

    assert build_conversations.build(tmp_path) == {"train": 2000, "validation": 100}
    for split in ("train", "validation"):
        shipped = build_conversations.TARGET / f"{split}.jsonl.gz"
        assert (tmp_path / f"{split}.jsonl.gz").read_bytes() == shipped.read_bytes()
    from forgather.ml.data.corpus import load_text_dataset

    data = load_text_dataset(str(build_conversations.TARGET), split="validation", text_field=None)
    for index, row in enumerate(data):
        messages = conversation_messages(row, index)
        assert messages[-1]["role"] == "assistant" and messages[-1]["content"]
