"""The demo models shipped with the bridge: ``demo/echo`` and ``demo/story``.

``demo/echo`` is the test workhorse: it repeats its prompt word by word (each
word keeping its trailing whitespace, so the chunks concatenate back to the
prompt; repeats are joined by a space), or emits given ``tokens`` verbatim,
with an optional delay and an optional failure after ``fail_after`` chunks.

``demo/story`` tells the bundled fables in whole sentences, one word at a
time at a reading pace; the prompt's words pick the fable.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from importlib import resources
from typing import Annotated

from . import Field, Log, Model, Predictor

__all__ = ["MODELS", "Story", "echo"]

_WORD = re.compile(r"\S+\s*|\s+")


async def echo(
    prompt: Annotated[str, Field("The text to send back, word by word")],
    delay_ms: Annotated[int, Field("Milliseconds before each word", ge=0, le=60_000)] = 0,
    repeat: Annotated[int, Field("How many times, joined by a space", ge=0)] = 1,
    tokens: Annotated[
        list[str] | None, Field("Chunks to send exactly as given, instead of the prompt's words")
    ] = None,
    fail_after: Annotated[
        int | None, Field("Fail on purpose after this many chunks (to see an error)", ge=0)
    ] = None,
) -> AsyncIterator[str]:
    """Echo ``prompt`` (or ``tokens``) back ``repeat`` times, chunk by chunk.
    Repeats of the prompt are joined by a space (``hi you hi you``) unless
    it ends in whitespace; ``tokens`` come back exactly as given."""
    chunks = list(tokens) if tokens is not None else _WORD.findall(prompt)
    last = chunks[-1] if chunks else ""
    spaced = tokens is None and last and last.strip() == last
    joined = [*chunks[:-1], last + " "] if spaced else chunks
    yield Log(f"echoing {len(chunks) * repeat} chunks")  # type: ignore[misc]
    sent = 0
    for round in range(repeat):
        for chunk in chunks if round == repeat - 1 else joined:
            if fail_after is not None and sent >= fail_after:
                raise RuntimeError(f"echo failed after {sent} chunks, as asked (fail_after)")
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            yield chunk
            sent += 1
    if fail_after is not None and sent >= fail_after:
        raise RuntimeError(f"echo failed after {sent} chunks, as asked (fail_after)")


class Story(Predictor):
    """Tells one of the bundled fables, whole sentences in order, a word at
    a time: the prompt's words pick the fable (``lion mouse``, ``grapes``),
    else the seed does. Past the end of one fable it goes on with another,
    never repeating a sentence; it stops at the last sentence end within
    ``max_words``."""

    def setup(self) -> None:
        text = resources.files(__package__).joinpath("story.txt").read_text()
        self.stories = [_SENTENCE.findall(p.strip()) for p in text.split("\n\n") if p.strip()]
        vocabulary = [{_plain(w) for w in " ".join(s).split()} for s in self.stories]
        self.vocabulary = vocabulary
        # How telling a word is: 1 / the number of fables it is in.
        seen_in: dict[str, int] = defaultdict(int)
        for words in vocabulary:
            for word in words:
                seen_in[word] += 1
        self.weight = {word: 1 / count for word, count in seen_in.items()}

    def pick(self, prompt: str, rng: random.Random) -> list[int]:
        """The fables in telling order: the prompt's best match first."""
        asked = {_plain(w) for w in prompt.split()} - _COMMON
        order = list(range(len(self.stories)))
        rng.shuffle(order)
        score = [sum(self.weight.get(w, 0) for w in asked & words) for words in self.vocabulary]
        return sorted(order, key=lambda i: -score[i])  # stable: ties keep the shuffle

    async def predict(
        self,
        prompt: Annotated[
            str, Field("What the story is about, e.g. the lion and the mouse, or sour grapes")
        ],
        max_words: Annotated[int, Field("The most words it may take", ge=1, le=10_000)] = 120,
        delay_ms: Annotated[int, Field("Milliseconds before each word", ge=0, le=60_000)] = 60,
        seed: Annotated[int | None, Field("The same seed tells the same story")] = None,
    ) -> AsyncIterator[str]:
        """Tell a fable; the prompt's words pick which."""
        rng = random.Random(seed)  # None: a different order each time
        words: list[str] = []
        for n, index in enumerate(self.pick(prompt, rng)):
            for i, sentence in enumerate(self.stories[index]):
                said = sentence.split()
                if len(words) + len(said) > max_words:
                    break
                if n and not i:
                    words[-1] += "\n\n"  # a new fable, a new paragraph
                words += said
            else:
                continue
            break
        if not words:  # a first sentence longer than max_words: its start
            words = self.stories[self.pick(prompt, random.Random(seed))[0]][0].split()
            words = words[: max(max_words, 1)]
        for i, word in enumerate(words):
            await asyncio.sleep(delay_ms / 1000)
            yield word if i == len(words) - 1 or word.endswith("\n") else word + " "


_SENTENCE = re.compile(r"[^.!?]+[.!?]+\s*")
#: Words too common to pick a fable by.
_COMMON = {"a", "an", "the", "me", "tell", "story", "about", "of", "and", "to", "please", "one"}


def _plain(word: str) -> str:
    return word.strip(".,!?;:'\"").lower()


#: The demo models' names, and what each serves.
_PREDICTORS: dict[str, object] = {"demo/echo": echo, "demo/story": Story}
MODELS = tuple(_PREDICTORS)


def make_models() -> dict[str, Model]:
    """A fresh ``Model`` for each demo, by name."""
    # Demos run no GPU: any number at once, whatever kind of predictor.
    return {name: Model(name, predictor, concurrency=0) for name, predictor in _PREDICTORS.items()}
