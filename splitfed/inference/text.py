"""Text in, streamed text out: chat templates, stop strings, and a chat that keeps its caches."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from splitfed.inference.generator import SplitGenerator
from splitfed.inference.sampling import SamplingSettings

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def encode_prompt(tokenizer, prompt: str | Messages, chat_template: bool = True) -> list[int]:
    """Token ids of ``prompt``: through the model's chat template when it has one (and ``chat_template``),
    with the assistant's turn opened; otherwise the plain text."""
    if chat_template and has_chat_template(tokenizer):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not isinstance(prompt, str):
        prompt = "\n".join(message["content"] for message in prompt)
    return list(tokenizer(prompt)["input_ids"])


class TextStream:
    """Turns generated token ids into text pieces as they come, ending at the first stop string.

    Text that could still become a stop string, or an incomplete character, is held back until it
    cannot; ``stopped`` says a stop string ended the text (it is not part of it).
    """

    def __init__(self, tokenizer, stop: list[str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self.text = ""
        self._emitted = 0
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; returns the text that became final."""
        if self.stopped:
            return ""
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self.text = text[:cut]
            return self._emit(cut)
        self.text = text
        hold = max((len(s) - 1 for s in self.stop), default=0)
        end = len(text) - hold
        while end > self._emitted and text[end - 1] == "\ufffd":
            end -= 1
        return self._emit(max(end, self._emitted))

    def finish(self) -> str:
        """The text still held back, now final."""
        return self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        piece = self.text[self._emitted:end]
        self._emitted = max(self._emitted, end)
        return piece


def stream_text(generator: SplitGenerator, tokenizer, prompt: str | Messages,
                sampling: SamplingSettings | None = None, chat_template: bool = True) -> Iterator[str]:
    """Generate a reply to ``prompt`` from a fresh context, yielding text pieces as they come."""
    generator.reset()
    ids = torch.tensor([encode_prompt(tokenizer, prompt, chat_template)])
    sampling = sampling or SamplingSettings()
    yield from _stream(generator, tokenizer, ids, sampling, TextStream(tokenizer, sampling.stop))


def _stream(generator: SplitGenerator, tokenizer, ids: torch.Tensor, sampling: SamplingSettings,
            text: TextStream) -> Iterator[str]:
    for token in generator.generate(ids, sampling=sampling, eos_token_id=tokenizer.eos_token_id,
                                    pad_token_id=tokenizer.pad_token_id):
        piece = text.push(int(token[0]))
        if piece:
            yield piece
        if text.stopped:
            break
    rest = text.finish()
    if rest:
        yield rest


class ChatSession:
    """A conversation whose head, trunk and tail caches persist between turns: each turn sends only
    the tokens the cache does not hold yet (the new user message and the template around it)."""

    def __init__(self, generator: SplitGenerator, tokenizer, sampling: SamplingSettings | None = None,
                 system: str | None = None) -> None:
        self.generator = generator
        self.tokenizer = tokenizer
        self.sampling = sampling or SamplingSettings()
        self.messages: Messages = [{"role": "system", "content": system}] if system else []
        self._unfed: list[int] = []  # the last token of the previous reply (sampled, never fed)
        self.reused_tokens = 0

    def say(self, text: str) -> Iterator[str]:
        """Add a user message; yields the assistant's reply as it comes (and records it)."""
        self.messages.append({"role": "user", "content": text})
        ids = encode_prompt(self.tokenizer, self.messages)
        generator = self.generator
        known = ([] if generator.ids is None else generator.ids[0].tolist()) + self._unfed
        fed = generator.past_length
        if fed and ids[:len(known)] == known and len(ids) > fed:
            new = ids[fed:]
            self.reused_tokens = fed
        else:
            if fed:
                log.info("the conversation no longer extends the cached tokens: starting its cache over")
            generator.reset()
            new, self.reused_tokens = ids, 0
        pieces: list[str] = []
        reply = TextStream(self.tokenizer, self.sampling.stop)
        for piece in _stream(generator, self.tokenizer, torch.tensor([new]), self.sampling, reply):
            pieces.append(piece)
            yield piece
        self._unfed = reply.ids[-1:]
        self.messages.append({"role": "assistant", "content": "".join(pieces)})
