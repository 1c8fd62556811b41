"""Incremental decoding and stop strings across token boundaries."""

from __future__ import annotations

import pytest

from forgather.serve.text import IncrementalDecoder, StopStrings

pytestmark = pytest.mark.unit


def stream(decoder: IncrementalDecoder, ids: list[int]) -> list[str]:
    return [decoder.push(t) for t in ids]


def test_pieces_join_to_the_decoded_text(tokenizer):
    prompt = tokenizer("She said")["input_ids"]
    ids = tokenizer(" that Mr. Bennet's daughters were — café — charming.")["input_ids"]
    decoder = IncrementalDecoder(tokenizer, prompt)
    pieces = stream(decoder, ids)
    assert "".join(pieces) + decoder.flush() == tokenizer.decode(ids)


def test_a_character_split_over_tokens_is_held_until_complete(tokenizer):
    vocab = tokenizer.get_vocab()
    first, second = vocab["Ã"], vocab["©"]  # the byte-level tokens of "é" (0xC3 0xA9)
    decoder = IncrementalDecoder(tokenizer)
    assert decoder.push(first) == ""
    assert decoder.push(second) == "é"


def test_invalid_bytes_come_out_after_a_few_tokens(tokenizer):
    lone = tokenizer.get_vocab()["Ã"]  # a UTF-8 lead byte that is never completed
    decoder = IncrementalDecoder(tokenizer)
    out = [decoder.push(lone) for _ in range(5)]
    assert out[:3] == ["", "", ""]
    assert "\ufffd" in "".join(out)


def test_stop_string_across_pieces_is_cut_and_never_shown():
    stops = StopStrings(["</end>"])
    shown = [stops.feed(p) for p in ["Hello ", "wor", "ld</", "en", "d> more"]]
    assert "".join(shown) == "Hello world"
    assert stops.stopped
    assert "<" not in "".join(shown)


def test_text_that_only_looks_like_a_stop_is_released():
    stops = StopStrings(["STOP"])
    shown = [stops.feed(p) for p in ["a ST", "ONE"]]
    assert shown == ["a ", "STONE"]
    assert not stops.stopped


def test_the_earliest_of_several_stops_wins():
    stops = StopStrings(["zz", "b"])
    assert stops.feed("aabzz") == "aa"


def test_held_text_is_released_at_the_end():
    stops = StopStrings(["xyz"])
    assert stops.feed("abcx") == "abc"
    assert stops.finish() == "x"
