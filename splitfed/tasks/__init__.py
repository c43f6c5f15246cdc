"""SuperGLUE cloze tasks: shipped data, templates, tokenization, scoring and metrics."""

from splitfed.tasks.encoding import (
    IGNORE_INDEX,
    collate,
    encode_example,
    encode_options,
    join_prompt_option,
    option_token_ids,
)
from splitfed.tasks.example import ClozeExample
from splitfed.tasks.loading import (
    DATA_DIR,
    TASKS,
    available_tasks,
    load_cloze_file,
    load_task,
    task_file,
)
from splitfed.tasks.metrics import accuracy, macro_f1
from splitfed.tasks.scoring import (
    LogitsFn,
    answer_logprobs,
    evaluate_cloze,
    predict,
    score_options,
)
from splitfed.tasks.templates import (
    TEMPLATES,
    boolq_example,
    cb_example,
    copa_example,
    rte_example,
)

__all__ = [
    "DATA_DIR",
    "IGNORE_INDEX",
    "TASKS",
    "TEMPLATES",
    "ClozeExample",
    "LogitsFn",
    "accuracy",
    "answer_logprobs",
    "available_tasks",
    "boolq_example",
    "cb_example",
    "collate",
    "copa_example",
    "encode_example",
    "encode_options",
    "evaluate_cloze",
    "join_prompt_option",
    "load_cloze_file",
    "load_task",
    "macro_f1",
    "option_token_ids",
    "predict",
    "rte_example",
    "score_options",
    "task_file",
]
