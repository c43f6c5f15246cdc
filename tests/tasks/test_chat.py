"""CoQA and XSum chat templates, their rendering with and without a chat template, and encoding."""

from __future__ import annotations

import pytest

from splitfed.tasks import (
    IGNORE_INDEX,
    GenerationExample,
    coqa_examples,
    encode_generation,
    load_examples,
    render_prompt,
    xsum_examples,
)
from splitfed.tasks.chat import COQA_SYSTEM, XSUM_SYSTEM, prompt_ids

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_xsum_template_and_word_cut() -> None:
    row = {"document": "One two three four five", "summary": "A short summary.", "id": "1"}
    (example,) = xsum_examples(row, max_words=3)
    assert example == GenerationExample("The passage is One two three.", "A short summary.", XSUM_SYSTEM)
    assert example.references == ("A short summary.",)


def test_coqa_official_row_from_the_shipped_story() -> None:
    examples = load_examples("coqa", "val")
    assert len(examples) == 12
    first = examples[0]
    assert first.system == COQA_SYSTEM
    assert first.user.startswith("The story is Once upon a time, in a barn near a farm house")
    assert first.user.endswith(". My question is What color was Cotton?")
    assert first.target == "white"
    assert first.references[0] == "white" and len(set(first.references)) == len(first.references)


def test_coqa_hf_row() -> None:
    row = {"story": "Cotton is a white kitten", "questions": ["What color?", "What is it?"],
           "answers": {"input_text": ["white", "a kitten"], "answer_start": [0, 0], "answer_end": [1, 1]}}
    examples = coqa_examples(row)
    assert [e.user for e in examples] == ["The story is Cotton is a white kitten. My question is What color?",
                                         "The story is Cotton is a white kitten. My question is What is it?"]
    assert [e.references for e in examples] == [("white",), ("a kitten",)]
    with pytest.raises(ValueError, match="no question"):
        coqa_examples({**row, "questions": [], "answers": {"input_text": []}})


def test_render_without_chat_template(word_tokenizer) -> None:
    example = GenerationExample("The passage is x.", "y", "Summarize.")
    tokenizer = word_tokenizer(["Summarize. The passage is x. Answer: y"])
    assert render_prompt(tokenizer, example) == "Summarize.\nThe passage is x.\nAnswer:"


def test_render_with_chat_template(word_tokenizer) -> None:
    tokenizer = word_tokenizer(["sys user"])
    tokenizer.chat_template = CHATML
    text = render_prompt(tokenizer, GenerationExample("user", "t", "sys"))
    assert text == ("<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nuser<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert render_prompt(tokenizer, GenerationExample("user", "t")).startswith("<|im_start|>user\n")


def test_encode_generation_labels_only_the_target_and_eos(word_tokenizer) -> None:
    tokenizer = word_tokenizer(["Summarize. The passage is x. Answer: a short summary"])
    example = GenerationExample("The passage is x.", "a short summary", "Summarize.")
    encoded = encode_generation(tokenizer, example)
    prompt = prompt_ids(tokenizer, example)
    target = tokenizer("a short summary", add_special_tokens=False)["input_ids"]
    assert encoded["input_ids"] == [*prompt, *target, tokenizer.eos_token_id]
    assert encoded["labels"] == [IGNORE_INDEX] * len(prompt) + [*target, tokenizer.eos_token_id]
    assert prompt[0] == tokenizer.bos_token_id  # no chat template: the tokenizer's BOS
    short = encode_generation(tokenizer, example, max_length=8)  # prompt cut from the left, BOS kept
    assert len(short["input_ids"]) == 8 and short["input_ids"][0] == tokenizer.bos_token_id
    assert short["input_ids"][-4:] == [*target, tokenizer.eos_token_id]


def test_generation_example_checks() -> None:
    with pytest.raises(ValueError, match="empty target"):
        GenerationExample("u", " ")
    assert GenerationExample("u", "t", references=("t", "T")).references == ("t", "T")
