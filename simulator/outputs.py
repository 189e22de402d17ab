"""What a request's output looks like: speculative-decoding steps and completion text.

Healthy requests get per-token draft acceptance around 0.7 (accept length ~2.5 with 3 drafts);
garbled ones almost never accept a draft; repetitive ones accept nearly all. The per-step detail
comes from a per-request generator seeded by (run seed, request index), so it is identical
whether or not spans are written.
"""

from __future__ import annotations

import random

import numpy as np

_CODE_WORDS = (
    "def", "return", "self", "for", "in", "if", "else:", "import", "from", "class", "None",
    "result", "value", "items", "config", "path", "async", "await", "try:", "except", "raise",
    "len(", "range(", "print(", "list", "dict", "=", "==", "+=", "(", ")", ":", "[", "]", "\n",
    "    ", "# ", "fix", "the", "test", "file", "function", "update", "error", "check", "request",
)
_RARE = "ꙮ𝔊ᛉ�ǂ᭄ꦿ꧁﷽ⷶ⸻𓂀ᐰꓘϪ䶵㐀龘鱻靐齉ʬҨ"
_REPEAT_PHRASES = (
    "the function returns the value of the function ",
    "I will now fix the test. ",
    "return self.value\n",
    "// TODO: ",
)


def draw_accept_prob(rng: random.Random, state: str) -> float:
    """Per-token draft acceptance of one request (drawn from the model's main generator)."""
    if state == "garbled":
        return rng.uniform(0.02, 0.10)
    if state == "repetition":
        return rng.uniform(0.993, 0.999)
    return rng.betavariate(12.0, 5.0)


def sample_steps(seed: int, index: int, accept_prob: float, out_tokens: int, draft_tokens: int) -> list[int]:
    """Accepted drafts per verify step; each step emits accepted + 1 tokens, totalling out_tokens."""
    gen = np.random.default_rng((seed, index))
    k = draft_tokens - 1
    drawn = np.minimum(gen.geometric(1.0 - accept_prob, size=out_tokens) - 1, k)
    emitted = np.cumsum(drawn + 1)
    steps = int(np.searchsorted(emitted, out_tokens)) + 1
    accepted: list[int] = [int(a) for a in drawn[:steps]]
    before = int(emitted[steps - 2]) if steps > 1 else 0
    accepted[-1] = out_tokens - before - 1
    return accepted


def completion_text(seed: int, index: int, state: str, chars: int) -> str:
    """Output text: code-like when healthy, rare characters when garbled, a loop when repetitive."""
    if chars <= 0:
        return ""
    rng = random.Random(seed * 1_000_003 + index)
    if state == "repetition":
        phrase = rng.choice(_REPEAT_PHRASES)
        lead = " ".join(rng.choice(_CODE_WORDS) for _ in range(rng.randint(3, 8))) + " "
        return (lead + phrase * (chars // len(phrase) + 1))[:chars]
    parts: list[str] = []
    size = 0
    while size < chars:
        if state == "garbled" and rng.random() < 0.6:
            word = "".join(rng.choice(_RARE) for _ in range(rng.randint(1, 4)))
        else:
            word = rng.choice(_CODE_WORDS)
        parts.append(word)
        size += len(word) + 1
    return " ".join(parts)[:chars]
