"""A small chat dataset with exact, checkable answers, made offline and deterministically.

Why: distilling an instruction-tuned teacher needs chat-shaped data (a `messages` list the
tokenizer's chat template renders), and measuring quality needs answers that can be checked by
exact match without a judge model. Each task here is a string or arithmetic operation a small
model can learn: reverse a word, add two numbers, sort digits, uppercase a word, count letters.

Rows: `{"messages": [{"role": "system"?, ...}, {"role": "user", "content": ...}],
"response": "..."}`; some rows carry a system message so that templates' system handling is
exercised. The same `(n, seed)` always gives the same rows, byte for byte.

Run `python -m raydistill.data.chat_tasks OUT N [SEED]` to write a JSONL file.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

# Lowercase ASCII words of 3-9 letters: short enough for a tiny model, varied enough for BPE.
_WORD_LIST = """
apple amber anchor arrow autumn badge bakery banana basket beacon berry bishop blanket
bottle bramble breeze bridge bucket butter cabin cactus camera candle canyon carpet castle
cedar cherry chimney circle clover cobalt comet copper cotton crayon cricket crystal dagger
daisy desert dinner dolphin donkey dragon drizzle eagle ember engine falcon feather fennel
fiddle forest fossil fountain garden garlic ginger glacier goblet granite gravel guitar
hammer harbor harvest hazel helmet hollow honey horizon island ivory jacket jasmine jigsaw
jungle kernel kettle kitten ladder lantern lemon lizard locket magnet mango maple marble
meadow melon mirror mitten monkey mosaic muffin needle nectar nickel nutmeg oasis ocean
olive onion orange orchid otter paddle palace pebble pepper pillow pirate planet pocket
pollen puzzle quartz quiver rabbit radish raven ribbon river rocket saddle salmon sapphire
scarf shadow silver spider spiral sponge sprout squirrel starling stone summer sunset
tablet teapot thistle thunder tiger timber tomato topaz tulip tunnel turtle umbrella
valley velvet violet walnut wander whisker willow window winter wizard yellow zebra zephyr
"""
WORDS: tuple[str, ...] = tuple(_WORD_LIST.split())

SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are a precise assistant. Answer with the result only.",
    "Reply with the answer and nothing else.",
    "You are terse.",
)

SYSTEM_SHARE = 0.3  # share of rows that carry a system message


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    prompt = rng.choice(("Reverse the word '{w}'.", "Write '{w}' backwards."))
    return prompt.format(w=word), word[::-1]


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    prompt = rng.choice(("What is {a} + {b}?", "Add {a} and {b}."))
    return prompt.format(a=a, b=b), str(a + b)


def _sort_digits(rng: random.Random) -> tuple[str, str]:
    digits = [rng.randint(0, 9) for _ in range(rng.randint(3, 6))]
    prompt = rng.choice(("Sort these digits: {d}", "Sort in ascending order: {d}"))
    shown = " ".join(map(str, digits))
    return prompt.format(d=shown), " ".join(map(str, sorted(digits)))


def _uppercase(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    prompt = rng.choice(("Uppercase: {w}", "Write '{w}' in capital letters."))
    return prompt.format(w=word), word.upper()


def _count_letters(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    prompt = rng.choice(("How many letters in '{w}'?", "Count the letters in '{w}'."))
    return prompt.format(w=word), str(len(word))


TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "reverse": _reverse,
    "add": _add,
    "sort_digits": _sort_digits,
    "uppercase": _uppercase,
    "count_letters": _count_letters,
}


def make_chat_tasks(n: int, seed: int) -> list[dict]:
    """`n` rows, tasks drawn uniformly; one `random.Random(seed)` drives everything, so the
    rows depend on nothing but `(n, seed)` (not on hash seeds or dict order)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    names = sorted(TASKS)
    rows = []
    for _ in range(n):
        prompt, answer = TASKS[rng.choice(names)](rng)
        messages = [{"role": "user", "content": prompt}]
        if rng.random() < SYSTEM_SHARE:
            messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        rows.append({"messages": messages, "response": answer})
    return rows


def write_chat_tasks(path: str | Path, n: int, seed: int) -> Path:
    """Write `make_chat_tasks(n, seed)` as JSONL (one row a line, UTF-8, "\\n" endings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in make_chat_tasks(n, seed):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_chat_tasks(path: str | Path) -> list[dict]:
    """Rows of a JSONL file written by `write_chat_tasks` (blank lines ignored)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def example_path() -> Path:
    """The shipped 3000-row file (seed 0), installed with the package."""
    return Path(__file__).with_name("examples") / "chat_tasks.jsonl"


# Words the chat templates put around the content: a tokenizer trained on the data alone would
# split them into bytes, while a real tokenizer has them as single tokens.
TEMPLATE_WORDS: tuple[str, ...] = ("system", "user", "assistant", "\n", "\n\n",
                                   "You are a helpful assistant.")


def corpus_for_tokenizer(rows: Iterable[dict]) -> list[str]:
    """Texts to train a tokenizer on: the template words, then every message and response with
    its role in front, as the chat template lays them out (so reversed words get merges too)."""
    texts = list(TEMPLATE_WORDS)
    for row in rows:
        texts.extend(f"{m['role']}\n{m['content']}" for m in row["messages"])
        texts.append(f"assistant\n{row['response']}")
    return texts


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print("usage: python -m raydistill.data.chat_tasks OUT N [SEED]", file=sys.stderr)
        return 2
    seed = int(args[2]) if len(args) == 3 else 0
    path = write_chat_tasks(args[0], int(args[1]), seed)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
