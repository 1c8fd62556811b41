"""Build the embedded conversation set `austen_chat/` from the embedded corpus `austen/`.

    python forgather/ml/data/corpora/build_conversations.py

Small, real and offline: every conversation is made from the text of Jane Austen's novels (public
domain) and their chapter metadata, by a few question forms with short, exact answers, so a tiny
model fine-tuned on it learns the chat format (whose turn it is, where an answer ends) rather than
facts it cannot hold. One JSON object per line, `{"messages": [{"role", "content"}, ...]}`:

* "Which novel is this line from? "..."" -> "It is from <novel>, chapter <n>."
* "Continue this passage: "..."" -> the next sentence of the chapter;
* "Who wrote <novel>?" -> "Jane Austen wrote <novel>; it was published in <year>.";
* "How many chapters does <novel> have?" -> "<novel> has <n> chapters.";
* two-turn conversations (a novel question, then "And which chapter?"), some with a system message.

Conversations for `train` come from the corpus's train chapters, those for `validation` from its
validation chapters. Seeded and written in order (gzip mtime 0): the output is byte-for-byte
reproducible.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "austen"
TARGET = HERE / "austen_chat"
YEARS = {
    "Sense and Sensibility": 1811,
    "Pride and Prejudice": 1813,
    "Mansfield Park": 1814,
    "Emma": 1815,
    "Northanger Abbey": 1817,
    "Persuasion": 1817,
}
SYSTEM = "You answer questions about Jane Austen's novels in one short sentence."
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
COUNTS = {"train": 2000, "validation": 100}


def read_chapters(split: str) -> list[dict]:
    with gzip.open(SOURCE / f"{split}.jsonl.gz", "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def sentences(text: str) -> list[str]:
    """The chapter's sentences of 30-140 characters on one line, in order."""
    found = []
    for paragraph in text.split("\n\n"):
        for sentence in SENTENCE.split(" ".join(paragraph.split())):
            if 30 <= len(sentence) <= 140:
                found.append(sentence)
    return found


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


def conversation(rng: random.Random, chapters: list[dict], totals: Counter) -> list[dict]:
    chapter = rng.choice(chapters)
    book, number = chapter["book"], chapter["chapter"]
    lines = sentences(chapter["text"])
    kind = rng.choice(("which", "which", "continue", "continue", "author", "count", "two_turns"))
    if kind in ("which", "two_turns") and lines:
        line = rng.choice(lines)
        if kind == "which":
            messages = [
                user(f'Which novel is this line from? "{line}"'),
                assistant(f"It is from {book}, chapter {number}."),
            ]
        else:
            messages = [
                user(f'Which novel is this line from? "{line}"'),
                assistant(f"It is from {book}."),
                user("And which chapter?"),
                assistant(f"Chapter {number}."),
            ]
    elif kind == "continue" and len(lines) > 1:
        index = rng.randrange(len(lines) - 1)
        messages = [
            user(f'Continue this passage: "{lines[index]}"'),
            assistant(lines[index + 1]),
        ]
    elif kind == "count":
        messages = [
            user(f"How many chapters does {book} have?"),
            assistant(f"{book} has {totals[book]} chapters."),
        ]
    else:
        messages = [
            user(f"Who wrote {book}?"),
            assistant(f"Jane Austen wrote {book}; it was published in {YEARS[book]}."),
        ]
    if rng.random() < 0.3:
        messages = [{"role": "system", "content": SYSTEM}, *messages]
    return messages


def build(target: Path = TARGET) -> dict[str, int]:
    every = read_chapters("train") + read_chapters("validation")
    totals = Counter(chapter["book"] for chapter in every)
    target.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, count in COUNTS.items():
        rng = random.Random(f"austen_chat/{split}")
        chapters = read_chapters(split)
        path = target / f"{split}.jsonl.gz"
        with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
            for _ in range(count):
                row = {"messages": conversation(rng, chapters, totals)}
                out.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        written[split] = count
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=Path, default=TARGET)
    options = parser.parse_args()
    for split, count in build(options.target).items():
        print(f"{options.target / split}.jsonl.gz: {count} conversations")


if __name__ == "__main__":
    main()
