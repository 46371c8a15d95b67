"""The demo models shipped with the bridge: ``demo/echo``, ``demo/story``
and ``demo/batch``.

``demo/echo`` is the test workhorse: it repeats its prompt word by word (each
word keeping its trailing whitespace, so the chunks concatenate back to the
prompt; repeats are joined by a space), or emits given ``tokens`` verbatim,
with an optional delay and an optional failure after ``fail_after`` chunks.

``demo/story`` tells the bundled fables in whole sentences, one word at a
time at a reading pace; the prompt's words pick the fable.

``demo/batch`` is a stand-in for a batching engine (vLLM, TGI): one loop
steps every running prediction together, each step one token for each, in
one call to the SDK (:class:`~bridge.sdk.BatchPredictor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Annotated

from . import BatchPredictor, Emit, Field, Log, Model, Predictor

__all__ = ["MODELS", "Batch", "Story", "echo"]

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
        max_words: Annotated[
            int, Field("The most words it may take", ge=1, le=10_000, openai="max_tokens")
        ] = 120,
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


@dataclass
class _Sequence:
    words: list[str]
    max_tokens: int
    interval: float
    due: float
    made: int = 0


class Batch(BatchPredictor):
    """``demo/batch``: the prompt's words again and again, ``max_tokens`` of
    them at ``tokens_per_second``, from one step loop for every running
    prediction, as a batching engine makes one token for every sequence
    per step. A prediction's tokens fall due on its rate's grid of the
    loop's clock (from the loop's first pass after it joined), so
    predictions at one rate share their steps: 1,000 at 20 tokens/s are 20
    steps a second of 1,000 tokens each."""

    def setup(self) -> None:
        self.running: dict[str, _Sequence] = {}
        self.joined = asyncio.Event()

    def add(
        self,
        id: str,
        prompt: Annotated[str, Field("The words to say, again and again")],
        max_tokens: Annotated[int, Field("How many tokens", ge=1, le=100_000)] = 64,
        tokens_per_second: Annotated[
            float, Field("Tokens a second, each prediction", ge=0.1, le=1000)
        ] = 20.0,
    ) -> None:
        words = _WORD.findall(prompt + " ") or [" "]
        # Due at the loop's next pass, which puts it on its rate's grid.
        self.running[id] = _Sequence(words, max_tokens, 1 / tokens_per_second, due=-1.0)
        self.joined.set()

    def abort(self, id: str) -> None:
        self.running.pop(id, None)

    def token(self, sequence: _Sequence) -> str:
        """The next token of *sequence* (what an engine's step decodes)."""
        return sequence.words[sequence.made % len(sequence.words)]

    async def run(self, emit: Emit) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.running:
                self.joined.clear()
                await self.joined.wait()
            now = loop.time()
            step: dict[str, str] = {}
            finished = []
            for id, sequence in self.running.items():
                if sequence.due < 0:  # joined since the last pass: the next step of its grid
                    sequence.due = math.ceil(now / sequence.interval) * sequence.interval
                if sequence.due <= now:
                    step[id] = self.token(sequence)
                    sequence.made += 1
                    sequence.due += sequence.interval
                    if sequence.made >= sequence.max_tokens:
                        finished.append(id)
            for id in finished:
                del self.running[id]
            if step:
                await emit(step, finished=finished)
            if self.running:
                due = min(sequence.due for sequence in self.running.values())
                self.joined.clear()
                with contextlib.suppress(TimeoutError):  # a join may come due sooner
                    await asyncio.wait_for(self.joined.wait(), max(0.0, due - loop.time()))


_SENTENCE = re.compile(r"[^.!?]+[.!?]+\s*")
#: Words too common to pick a fable by.
_COMMON = {"a", "an", "the", "me", "tell", "story", "about", "of", "and", "to", "please", "one"}


def _plain(word: str) -> str:
    return word.strip(".,!?;:'\"").lower()


#: The demo models' names, and what each serves.
_PREDICTORS: dict[str, object] = {"demo/echo": echo, "demo/story": Story, "demo/batch": Batch}
MODELS = tuple(_PREDICTORS)


def make_models(multiplexed: bool = True) -> dict[str, Model]:
    """A fresh ``Model`` for each demo, by name (*multiplexed*: offering
    the bridge Stream)."""
    # Demos run no GPU: any number at once, whatever kind of predictor.
    return {
        name: Model(name, predictor, concurrency=0, multiplexed=multiplexed)
        for name, predictor in _PREDICTORS.items()
    }
