"""The built-in task, as a data source: `"47+38="` → `"58"`, the answer's digits reversed.

Reversed, a causal LM writes the ones digit first and can carry, as people do. All n-digit
pairs, shuffled once by seed; the splits are drawn from them like from any other data file.
"""

from __future__ import annotations

import random

from raydistill.errors import ConfigError


def addition_records(digits: int, seed: int) -> list[dict]:
    """Every pair of n-digit numbers as a {prompt, response} record, in a seeded order."""
    top = 10**digits
    if top * top > 4_000_000:
        raise ConfigError(f"data.addition.digits={digits} makes too many pairs for the "
                          "built-in task (at most 3)")
    pairs = [(a, b) for a in range(top) for b in range(top)]
    random.Random(seed).shuffle(pairs)
    return [{"id": f"{a}+{b}", "prompt": f"{a}+{b}=", "response": str(a + b)[::-1]}
            for a, b in pairs]
