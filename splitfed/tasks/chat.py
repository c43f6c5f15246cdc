"""Generation tasks with chat templates (FedSEA-LLaMA Table 6): CoQA and XSum, and their encoding.

CoQA    system "You are a helpful assistant. You need to answer my question base on the provided
        story."  user "The story is {story}. My question is {question}."  assistant "{answer}"
XSum    system "You are a helpful assistant. You need to summarize an abstract base on the provided
        passage."  user "The passage is {passage}."  assistant "{summary}"

The wording is the paper's. A tokenizer with a chat template (SmolLM2-Instruct) renders the turn
with it; one without (the tiny test models) gets ``{system}\\n{user}\\nAnswer:`` and the answer after
a space. Long stories and passages are cut to their first ``max_words`` words.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from splitfed.tasks.encoding import Encoded, join_prompt_option
from splitfed.tasks.example import GenerationExample
from splitfed.tasks.templates import _field

Row = Mapping[str, Any]

COQA_SYSTEM = "You are a helpful assistant. You need to answer my question base on the provided story."
XSUM_SYSTEM = ("You are a helpful assistant. You need to summarize an abstract base on the provided "
               "passage.")
MAX_WORDS = 400


def _cut(text: str, max_words: int) -> str:
    words = text.split()
    return " ".join(words[:max_words])


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def coqa_examples(row: Row, max_words: int = MAX_WORDS) -> list[GenerationExample]:
    """One example per question of a CoQA story (official JSON or HF ``coqa`` row)."""
    story = _cut(_field(row, "story"), max_words)
    questions, answers = row.get("questions"), row.get("answers")
    if isinstance(answers, Mapping):  # HF: questions is a list of str, answers a dict of lists
        pairs = list(zip(questions or [], answers.get("input_text", []), strict=True))
        extra: list[list[str]] = [[] for _ in pairs]
    else:  # official: lists of {input_text, turn_id}, additional_answers {"0": [...], ...}
        pairs = [(q["input_text"], a["input_text"]) for q, a in zip(questions or [], answers or [],
                                                                        strict=True)]
        extra = [[alt[i]["input_text"] for alt in (row.get("additional_answers") or {}).values()
                  if i < len(alt)] for i in range(len(pairs))]
    if not pairs:
        raise ValueError("CoQA row has no question/answer turns")
    return [
        GenerationExample(f"The story is {_sentence(story)} My question is {question.strip()}",
                          answer.strip(), COQA_SYSTEM,
                          tuple(dict.fromkeys([answer.strip(), *(e.strip() for e in more)])))
        for (question, answer), more in zip(pairs, extra, strict=True)
    ]


def xsum_examples(row: Row, max_words: int = MAX_WORDS) -> list[GenerationExample]:
    """One example per XSum row (``document``, ``summary``)."""
    passage = _cut(_field(row, "document"), max_words)
    return [GenerationExample(f"The passage is {_sentence(passage)}", _field(row, "summary"), XSUM_SYSTEM)]


GENERATION_TEMPLATES: dict[str, Callable[..., list[GenerationExample]]] = {
    "coqa": coqa_examples,
    "xsum": xsum_examples,
}
GENERATION_METRICS: dict[str, str] = {"xsum": "rouge", "coqa": "squad_f1"}


def uses_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, example: GenerationExample) -> str:
    """The prompt text up to where the answer starts (chat template when the tokenizer has one)."""
    if uses_chat_template(tokenizer):
        messages = [{"role": "user", "content": example.user}]
        if example.system:
            messages.insert(0, {"role": "system", "content": example.system})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    system = f"{example.system}\n" if example.system else ""
    return f"{system}{example.user}\nAnswer:"


def prompt_ids(tokenizer: Any, example: GenerationExample) -> list[int]:
    """Token ids of :func:`render_prompt` (the chat template carries its own special tokens)."""
    chat = uses_chat_template(tokenizer)
    return list(tokenizer(render_prompt(tokenizer, example), add_special_tokens=not chat)["input_ids"])


def encode_generation(tokenizer: Any, example: GenerationExample, max_length: int | None = None) -> Encoded:
    """``prompt + target + EOS`` with labels on the target and EOS only (prompt cut from the left)."""
    target = example.target if uses_chat_template(tokenizer) else " " + example.target
    target_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        target_ids.append(int(tokenizer.eos_token_id))
    if max_length is not None and len(target_ids) > max_length // 2:
        target_ids = target_ids[: max_length // 2]
    bos = getattr(tokenizer, "bos_token_id", None)
    return join_prompt_option(prompt_ids(tokenizer, example), target_ids, max_length, bos)
