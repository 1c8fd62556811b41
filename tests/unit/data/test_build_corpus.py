"""build_corpus: the R serialization reader and the cleaning rules, on small hand-made inputs."""

from __future__ import annotations

import gzip
import struct
import zlib

import pytest

from forgather.ml.data.corpora import build_corpus as bc

pytestmark = pytest.mark.unit


def xdr_int(value: int) -> bytes:
    return struct.pack(">i", value)


def charsxp(text: str | None) -> bytes:
    if text is None:
        return xdr_int(bc.CHARSXP) + xdr_int(-1)
    raw = text.encode()
    return xdr_int(bc.CHARSXP | (1 << 15)) + xdr_int(len(raw)) + raw


def strsxp(values: list[str | None], names: list[str] | None = None) -> bytes:
    flags = bc.STRSXP | (bc.HAS_ATTR if names else 0)
    body = xdr_int(flags) + xdr_int(len(values)) + b"".join(charsxp(v) for v in values)
    return body + (names_attribute(names) if names else b"")


def names_attribute(names: list[str]) -> bytes:
    symbol = xdr_int(bc.SYMSXP) + charsxp("names")
    return xdr_int(bc.LISTSXP | bc.HAS_TAG) + symbol + strsxp(names) + xdr_int(bc.NILVALUE)


def serialized(body: bytes, version: int = 3) -> bytes:
    header = b"X\n" + xdr_int(version) + xdr_int(0x040201) + xdr_int(0x030500)
    if version == 3:
        header += xdr_int(5) + b"UTF-8"
    return header + body


@pytest.mark.parametrize("version", [2, 3])
def test_r_reader_decodes_character_vectors_with_names_and_na(version):
    value = bc.RReader(serialized(strsxp(["a", None, "£"], names=["x", "y", "z"]), version)).read()
    assert value.values == ["a", None, "£"]
    assert value.attributes["names"].values == ["x", "y", "z"]


def test_r_reader_rejects_non_xdr_data():
    with pytest.raises(ValueError, match="XDR"):
        bc.RReader(b"A\n0000").read()


def test_read_lazyload_follows_the_index_to_compressed_records(tmp_path):
    records, index_entries = b"", []
    for lines in (["Line one", ""], ["Other"]):
        raw = serialized(strsxp(lines))
        record = struct.pack(">I", len(raw)) + zlib.compress(raw)
        index_entries.append((len(records), len(record)))
        records += record
    pairs = b"".join(
        xdr_int(bc.INTSXP) + xdr_int(2) + xdr_int(off) + xdr_int(n) for off, n in index_entries
    )
    variables = xdr_int(bc.VECSXP | bc.HAS_ATTR) + xdr_int(2) + pairs + names_attribute(["a", "b"])
    empty = xdr_int(bc.VECSXP) + xdr_int(0)
    compressed = xdr_int(bc.LGLSXP) + xdr_int(1) + xdr_int(1)
    index = xdr_int(bc.VECSXP | bc.HAS_ATTR) + xdr_int(3) + variables + empty + compressed
    index += names_attribute(["variables", "references", "compressed"])
    (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(serialized(index)))
    (tmp_path / "Rdata.rdb").write_bytes(records)
    assert bc.read_lazyload(tmp_path) == {"a": ["Line one", ""], "b": ["Other"]}


BOOK = """\
A NOVEL

By Someone

VOLUME I

CHAPTER I

It was a _very_ fine
day,  and all was well.

          Verse line one,
          verse line two.

                    * * *

"Indeed," said she.

[End volume one of this edition.
Printed somewhere]

CHAPTER II

Second chapter text
goes on here.

THE END

A NOTE ON THE TEXT

Modern editorial text.
""".splitlines()


def test_chapters_drop_front_matter_headings_notes_and_end_markers():
    result = bc.chapters(BOOK)
    assert result == [
        [
            "It was a very fine day, and all was well.",
            "Verse line one,\nverse line two.",
            '"Indeed," said she.',
        ],
        ["Second chapter text goes on here."],
    ]


def test_build_documents_sends_every_twentieth_chapter_to_validation():
    lines = []
    for number in range(1, 31):
        lines += [f"Chapter {number}", "", f"Text of chapter {number}.", ""]
    books = dict.fromkeys(bc.BOOKS, [])
    books["sensesensibility"] = lines
    train, validation = bc.build_documents(books)
    assert [d["chapter"] for d in validation] == [20]
    assert len(train) == 29
    assert validation[0] == {
        "text": "Text of chapter 20.",
        "book": "Sense and Sensibility",
        "chapter": 20,
    }
