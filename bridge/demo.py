"""The demo models shipped with the bridge: ``demo/echo`` and ``demo/story``.

``demo/echo`` is the test workhorse: it repeats its prompt word by word (each
word keeping its trailing whitespace, so the chunks concatenate back to the
prompt), or emits given ``tokens`` verbatim, with an optional delay and an
optional failure after ``fail_after`` chunks.

``demo/story`` is a small real text generator: a word-level Markov chain over
a bundled text, emitting one word at a time at a reading pace.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from importlib import resources

from .sdk import Log, Model, Predictor

__all__ = ["MODELS", "Story", "echo"]

_WORD = re.compile(r"\S+\s*|\s+")


async def echo(
    prompt: str,
    delay_ms: int = 0,
    repeat: int = 1,
    tokens: list[str] | None = None,
    fail_after: int | None = None,
) -> AsyncIterator[str]:
    """Echo ``prompt`` (or ``tokens``) back ``repeat`` times, chunk by chunk."""
    chunks = list(tokens) if tokens is not None else _WORD.findall(prompt)
    yield Log(f"echoing {len(chunks) * repeat} chunks")  # type: ignore[misc]
    sent = 0
    for _ in range(repeat):
        for chunk in chunks:
            if fail_after is not None and sent >= fail_after:
                raise RuntimeError(f"echo failed after {sent} chunks, as asked (fail_after)")
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            yield chunk
            sent += 1
    if fail_after is not None and sent >= fail_after:
        raise RuntimeError(f"echo failed after {sent} chunks, as asked (fail_after)")


class Story(Predictor):
    """Tells a story, one word at a time, from a Markov chain (order 2)."""

    def setup(self) -> None:
        text = resources.files(__package__).joinpath("story.txt").read_text()
        self.words = text.split()
        self.chain: dict[tuple[str, str], list[str]] = defaultdict(list)
        for a, b, c in zip(self.words, self.words[1:], self.words[2:], strict=False):
            self.chain[(a, b)].append(c)
        self.starts = [k for k in self.chain if k[0] == "Once"]

    async def predict(
        self,
        prompt: str,
        max_words: int = 120,
        delay_ms: int = 60,
        seed: int | None = None,
    ) -> AsyncIterator[str]:
        """Tell a story; the prompt's words steer where it starts."""
        rng = random.Random(seed)  # None: a different story each time
        asked = {w.strip(".,!?").lower() for w in prompt.split()}
        steered = [k for k in self.chain if k[0].lower() in asked and k[0][0].isupper()]
        state = rng.choice(steered or self.starts)
        out = list(state)
        for _ in range(max_words - 2):
            following = self.chain.get(state)
            if not following:
                break
            out.append(rng.choice(following))
            state = (state[1], out[-1])
            if out[-1].endswith(".") and len(out) > max_words * 0.8:
                break
        for i, word in enumerate(out):
            await asyncio.sleep(delay_ms / 1000)
            yield word if i == len(out) - 1 else word + " "


def make_models() -> dict[str, Model]:
    """A fresh ``Model`` for each demo, by name."""
    return {"demo/echo": Model("demo/echo", echo), "demo/story": Model("demo/story", Story)}


MODELS = ("demo/echo", "demo/story")
