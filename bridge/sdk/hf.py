"""A Hugging Face transformers language model, served token by token.

Subclass :class:`TransformersPredictor` and name the model (a Hub id, or a
directory ``save_pretrained`` wrote)::

    # llm.py
    from bridge.sdk.hf import TransformersPredictor

    class Predictor(TransformersPredictor):
        model_path = "Qwen/Qwen2.5-0.5B-Instruct"

then ``python -m bridge serve-model llm.py:Predictor --name me/qwen``.

``predict`` runs ``generate`` in a thread with a ``TextIteratorStreamer`` and
yields the text as it comes. A cancel stops the generation within a token:
the stopping criteria see the cancel at the next token. A class runs one
prediction at a time (concurrency 1, as Cog): a GPU is never sent two.

The transformers, tokenizers and torch packages are the ``llm`` extra
(``pip install 'grpc-sse-bridge[llm]'``); nothing here imports them until a
model is set up.

:func:`train_fable_gpt2` makes the small model ``make run-llm`` and
``make test-llm`` use: a GPT-2 of two layers, with a tokenizer trained on the
bundled fables and a few seconds of training on the CPU, so that it writes
fable-like words with no download.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from . import Field, Metrics, Model, Predictor

__all__ = ["FableGPT2", "TransformersPredictor", "fable_model", "train_fable_gpt2"]

log = logging.getLogger(__name__)


class _Stop:
    """Stopping criteria that stop ``generate`` once a cancel is asked, and
    count the tokens made (each call is one more)."""

    def __init__(self, prompt_tokens: int) -> None:
        self.asked = threading.Event()
        self.prompt_tokens = prompt_tokens
        self.made = 0

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
        self.made = int(input_ids.shape[-1]) - self.prompt_tokens
        return self.asked.is_set()


class TransformersPredictor(Predictor):
    """A causal language model from transformers (see the module's doc)."""

    #: The model: a Hugging Face Hub id or a local directory.
    model_path: str | os.PathLike[str] = ""
    #: Where it runs: ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
    device = "cpu"

    def setup(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not self.model_path:
            raise ValueError(f"{type(self).__name__}.model_path names no model")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        model = AutoModelForCausalLM.from_pretrained(self.model_path)
        self.model = model.to(self.device).eval()

    async def predict(
        self,
        prompt: Annotated[str, Field("The text to continue")] = "",
        messages: Annotated[
            list[dict[str, Any]] | None,
            Field("A conversation, [{role, content}], through the tokenizer's chat template"),
        ] = None,
        max_new_tokens: Annotated[int, Field("The most tokens to write", ge=1, le=4096)] = 128,
        temperature: Annotated[float, Field("0 picks the likeliest token", ge=0, le=2)] = 0.0,
        top_p: Annotated[float, Field("Nucleus sampling", ge=0.01, le=1)] = 1.0,
        seed: Annotated[int | None, Field("The same seed writes the same text")] = None,
    ) -> AsyncIterator[Any]:
        """Continue *prompt*, a piece of text at a time."""
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        encoded = self._encode(prompt, messages).to(self.device)
        prompt_tokens = int(encoded["input_ids"].shape[-1])
        stop = _Stop(prompt_tokens)
        # Special tokens (<|endoftext|>, a chat template's markers) are not text for users.
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=None
        )
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if seed is not None:
            torch.manual_seed(seed)
        pad = self.tokenizer.pad_token_id
        kwargs = {
            **encoded,
            **sampling,
            "max_new_tokens": max_new_tokens,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([stop]),
            "pad_token_id": pad if pad is not None else self.tokenizer.eos_token_id,
        }
        loop = asyncio.get_running_loop()

        def generate() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            finally:
                streamer.end()  # a generate that failed must not leave the reader waiting

        # The generation's thread is this call's child: it ends before the
        # call does, however the call ends (a cancel asks it to stop first).
        generating = loop.run_in_executor(None, generate)
        pieces = iter(streamer)
        finished = False
        try:
            while (piece := await loop.run_in_executor(None, next, pieces, None)) is not None:
                if piece:
                    yield piece
            await generating  # its error, if it failed
            finished = True
            yield Metrics({"input_token_count": prompt_tokens, "output_token_count": stop.made})
        finally:
            stop.asked.set()
            await asyncio.shield(asyncio.wait([generating]))
            log.info(
                "generate ended after %d of %d new tokens%s",
                stop.made,
                max_new_tokens,
                "" if finished else " (cancelled)",
            )

    def _encode(self, prompt: str, messages: list[dict[str, Any]] | None) -> Any:
        """The model's input ids: *messages* through the tokenizer's chat
        template (an instruct model's turns and markers), else the last
        user message's text as a prompt; or *prompt* as it is."""
        if messages:
            if getattr(self.tokenizer, "chat_template", None):
                text = self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
                # The template wrote the special tokens it wants already.
                return self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
            users = [m for m in messages if m.get("role") == "user"]
            prompt = _text(users[-1].get("content")) if users else ""
        if not prompt:
            raise ValueError("give a prompt, or messages with a user message")
        return self.tokenizer(prompt, return_tensors="pt")


def _text(content: Any) -> str:
    """A message's text: a string, or its text parts (OpenAI's form)."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def train_fable_gpt2(directory: str | os.PathLike[str], steps: int = 300) -> Path:
    """A small GPT-2 trained on the bundled fables, saved in *directory*
    (kept there: made once). About 16 s on two CPU cores; no download."""
    path = Path(directory)
    if (path / "config.json").exists():
        return path
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    text = resources.files(__package__).joinpath("story.txt").read_text()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(text.split("\n\n"), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    eos = tokenizer.eos_token_id
    ids = [eos]
    for fable in text.split("\n\n"):
        ids += tokenizer(fable.strip())["input_ids"] + [eos]
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=2048, n_embd=96, n_layer=2, n_head=4,
        bos_token_id=eos, eos_token_id=eos,
    )  # fmt: skip
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # what it is (else a warning that it guessed so)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.tensor(ids)
    window = 64
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - window - 1, (16,))
        batch = torch.stack([data[s : s + window] for s in starts.tolist()])
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    log.info("fable GPT-2 trained: loss %.2f after %d steps", loss.item(), steps)
    # Written beside it, then renamed: a directory with a config.json is whole.
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    tokenizer.save_pretrained(partial)
    hf_logging.disable_progress_bar()  # a bar for one small file is noise
    try:
        model.save_pretrained(partial)
    finally:
        hf_logging.enable_progress_bar()
    try:
        partial.rename(path)
    except OSError:  # made meanwhile by another process: that one is kept
        shutil.rmtree(partial, ignore_errors=True)
    return path


class FableGPT2(TransformersPredictor):
    """``demo/fable-gpt2``: the small GPT-2 of :func:`train_fable_gpt2`,
    trained in ``setup()`` the first time (about 16 s) and kept in the user's
    cache directory (``$XDG_CACHE_HOME/grpc-sse-bridge``)."""

    def setup(self) -> None:
        from transformers.utils import logging as hf_logging

        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        self.model_path = train_fable_gpt2(cache / "grpc-sse-bridge" / "fable-gpt2")
        hf_logging.disable_progress_bar()  # a bar for 28 small tensors is noise in make run-llm
        try:
            super().setup()
        finally:
            hf_logging.enable_progress_bar()


def fable_model() -> Model:
    """``demo/fable-gpt2``, as ``run-demo --llm`` serves it."""
    return Model("demo/fable-gpt2", FableGPT2)
