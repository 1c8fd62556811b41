"""Rebuild the embedded corpus `austen/` from the Debian package `r-cran-janeaustenr`.

    python forgather/ml/data/corpora/build_corpus.py            # runs `apt-get download` itself
    python forgather/ml/data/corpora/build_corpus.py --deb r-cran-janeaustenr_1.0.0-1_all.deb

The package (version 1.0.0-1, MIT; the novels themselves are in the public domain) holds Jane Austen's
six completed novels as R character vectors, one element per line of the Project Gutenberg text, in an R
lazy-load database (`data/Rdata.rdx` index + `data/Rdata.rdb` records). This script reads that database
with a small reader of R's XDR serialization format written here (R is not needed), cleans the text and
writes one JSON object per chapter:

    {"text": "...", "book": "Pride and Prejudice", "chapter": 1}

Cleaning: front matter (titles, "VOLUME I", the author's advertisement), chapter headings, end markers
("THE END", "FINIS"), editorial notes of the digitised editions (bracketed "[... edition ...]"
paragraphs, the Signet "A NOTE ON THE TEXT" and its footnote) and scene-break lines (`* * *`) are
dropped; `_emphasis_` underscores are removed; the paragraphs of prose are unwrapped to one line each,
indented paragraphs (verse, letter headings and signatures) keep their line breaks without the
indentation; runs of spaces become one space; paragraphs are separated by one blank line.

Split: chapters are numbered across the books in publication order; every 20th (global index
19, 39, ...) goes to validation (about 5%), the others to train. The output is byte-for-byte
reproducible: documents are written in order, gzip with mtime 0.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

PACKAGE = "r-cran-janeaustenr"
VERSION = "1.0.0-1"
DEB_SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
DATA_DIR = "usr/lib/R/site-library/janeaustenr/data"
OUTPUT_DIR = Path(__file__).resolve().parent / "austen"
VALIDATION_EVERY = 20

# R object name -> title, in publication order.
BOOKS = {
    "sensesensibility": "Sense and Sensibility",
    "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}


# ---- R serialization (XDR, format versions 2 and 3) ------------------------------------------

NILVALUE, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = (
    254,
    1,
    2,
    9,
    10,
    13,
    14,
    16,
    19,
)
REFSXP = 255
HAS_ATTR, HAS_TAG = 1 << 9, 1 << 10


class RObject:
    """A decoded R vector: its values and its attributes (e.g. `names`)."""

    def __init__(self, values: list[Any], attributes: dict[str, Any]):
        self.values = values
        self.attributes = attributes


class RReader:
    """Reads the subset of R's binary XDR serialization used by data packages (vectors, lists)."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        self.refs: list[Any] = []

    def int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def read(self) -> Any:
        if self.data[:2] != b"X\n":
            raise ValueError("not an R XDR serialization")
        self.pos = 2
        version = self.int()
        self.int()  # writer's R version
        self.int()  # minimal reader version
        if version == 3:
            length = self.int()  # native encoding name
            self.pos += length
        return self.item()

    def item(self) -> Any:
        flags = self.int()
        kind = flags & 0xFF
        if kind == NILVALUE:
            return None
        if kind == REFSXP:
            return self.refs[(flags >> 8) - 1]
        if kind == SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name
        if kind == CHARSXP:
            length = self.int()
            if length == -1:
                return None  # NA_character_
            raw = self.data[self.pos : self.pos + length]
            self.pos += length
            return raw.decode("utf-8")
        if kind == LISTSXP:  # pairlist: attributes and tagged arguments
            pairs: dict[str, Any] = {}
            while kind == LISTSXP:
                if flags & HAS_ATTR:
                    self.item()
                tag = self.item() if flags & HAS_TAG else None
                pairs[str(tag)] = self.item()
                flags = self.int()
                kind = flags & 0xFF
            if kind != NILVALUE:
                raise ValueError(f"unexpected pairlist end {kind}")
            return pairs
        if kind in (STRSXP, VECSXP):
            values = [self.item() for _ in range(self.int())]
        elif kind in (INTSXP, LGLSXP):
            count = self.int()
            values = list(struct.unpack_from(f">{count}i", self.data, self.pos))
            self.pos += 4 * count
        elif kind == REALSXP:
            count = self.int()
            values = list(struct.unpack_from(f">{count}d", self.data, self.pos))
            self.pos += 8 * count
        else:
            raise ValueError(f"unsupported R type {kind}")
        attributes = self.item() if flags & HAS_ATTR else {}
        return RObject(values, attributes or {})


def read_lazyload(data_dir: Path) -> dict[str, list[str]]:
    """The character vectors of an R lazy-load database (`Rdata.rdx` + `Rdata.rdb`) by name."""
    index = RReader(gzip.decompress((data_dir / "Rdata.rdx").read_bytes())).read()
    variables = index.values[index.attributes["names"].values.index("variables")]
    names = variables.attributes["names"].values
    records = (data_dir / "Rdata.rdb").read_bytes()
    result: dict[str, list[str]] = {}
    for name, (offset, length) in zip(names, (v.values for v in variables.values), strict=True):
        record = records[offset : offset + length]
        (size,) = struct.unpack(">I", record[:4])
        raw = zlib.decompress(record[4:])
        if len(raw) != size:
            raise ValueError(f"{name}: record length {len(raw)} != {size}")
        result[name] = [line or "" for line in RReader(raw).read().values]
    return result


# ---- cleaning -------------------------------------------------------------------------------

CHAPTER = re.compile(r"^\s*chapter\s+([ivxlc]+|\d+)\.?\s*$", re.IGNORECASE)
DROP_PARAGRAPH = (
    re.compile(r"^\[.*edition", re.IGNORECASE | re.DOTALL),  # editorial notes
    re.compile(r"^[*\s]+$"),  # scene breaks
    re.compile(r"^(THE END|FINIS)\.?$", re.IGNORECASE),
    re.compile(r"^VOLUME [IVX]+$"),
    re.compile(r"^\*Vide "),  # Northanger Abbey's footnote, printed after the last chapter
)
END_OF_TEXT = "A NOTE ON THE TEXT"  # Northanger Abbey: a modern editor's note follows


def paragraphs(lines: list[str]) -> list[list[str]]:
    """Groups of non-blank lines."""
    groups: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        if line.strip():
            current.append(line.rstrip())
        elif current:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def clean_paragraph(lines: list[str]) -> str:
    indented = any(re.match(r"^ {2,}\S", line) for line in lines)
    if indented:  # verse, letter headings and signatures: keep the lines
        text = "\n".join(re.sub(r" {2,}", " ", line.strip()) for line in lines)
    else:
        text = re.sub(r"\s+", " ", " ".join(line.strip() for line in lines))
    return text.replace("_", "").strip()


def chapters(lines: list[str]) -> list[list[str]]:
    """The book's chapters as lists of cleaned paragraphs (front matter and end matter dropped)."""
    result: list[list[str]] = []
    for group in paragraphs(lines):
        first = group[0].strip()
        if first == END_OF_TEXT:
            break
        if len(group) == 1 and CHAPTER.match(first):
            result.append([])
            continue
        if not result:
            continue  # front matter
        text = clean_paragraph(group)
        if text and not any(pattern.search(text) for pattern in DROP_PARAGRAPH):
            result[-1].append(text)
    return [chapter for chapter in result if chapter]


def build_documents(books: dict[str, list[str]]) -> tuple[list[dict], list[dict]]:
    train: list[dict] = []
    validation: list[dict] = []
    index = 0
    for name, title in BOOKS.items():
        for number, chapter in enumerate(chapters(books[name]), start=1):
            doc = {"text": "\n\n".join(chapter), "book": title, "chapter": number}
            (validation if index % VALIDATION_EVERY == VALIDATION_EVERY - 1 else train).append(doc)
            index += 1
    return train, validation


def write_jsonl_gz(path: Path, docs: list[dict]) -> None:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as out:
        for doc in docs:
            out.write((json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8"))
    path.write_bytes(buffer.getvalue())


# ---- main -----------------------------------------------------------------------------------


def fetch_deb(directory: Path) -> Path:
    subprocess.run(
        ["apt-get", "download", f"{PACKAGE}={VERSION}"], cwd=directory, check=True
    )  # needs `apt-get update` once
    return next(directory.glob(f"{PACKAGE}_*.deb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deb", type=Path, help=f"the {PACKAGE} .deb (default: apt-get download)")
    parser.add_argument("--output", type=Path, default=OUTPUT_DIR)
    parser.add_argument("--no-verify", action="store_true", help="skip the .deb SHA-256 check")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        deb = args.deb or fetch_deb(workdir)
        digest = hashlib.sha256(deb.read_bytes()).hexdigest()
        if digest != DEB_SHA256 and not args.no_verify:
            print(f"error: {deb} has SHA-256 {digest}, expected {DEB_SHA256}", file=sys.stderr)
            return 1
        subprocess.run(["dpkg-deb", "-x", str(deb), str(workdir / "root")], check=True)
        books = read_lazyload(workdir / "root" / DATA_DIR)
    train, validation = build_documents(books)
    args.output.mkdir(parents=True, exist_ok=True)
    write_jsonl_gz(args.output / "train.jsonl.gz", train)
    write_jsonl_gz(args.output / "validation.jsonl.gz", validation)
    for split, docs in (("train", train), ("validation", validation)):
        chars = sum(len(d["text"]) for d in docs)
        size = (args.output / f"{split}.jsonl.gz").stat().st_size
        print(f"{split}: {len(docs)} documents, {chars} characters, {size} bytes compressed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
