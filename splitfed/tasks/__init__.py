"""Evaluation tasks: shipped data, SuperGLUE cloze and chat generation templates, your own data
described in a config, tokenization, log-likelihood scoring, greedy generation and metrics."""

from splitfed.tasks.chat import (
    GENERATION_TEMPLATES,
    coqa_examples,
    encode_generation,
    render_prompt,
    xsum_examples,
)
from splitfed.tasks.custom import TaskSpec, custom_cloze, custom_generation, fill
from splitfed.tasks.encoding import (
    IGNORE_INDEX,
    collate,
    encode_example,
    encode_options,
    join_prompt_option,
    option_token_ids,
)
from splitfed.tasks.example import ClozeExample, GenerationExample
from splitfed.tasks.files import FORMATS, read_rows
from splitfed.tasks.generation_eval import GenerateFn, evaluate_generation, generate_answers
from splitfed.tasks.loading import (
    CLOZE_TASKS,
    DATA_DIR,
    TASKS,
    available_tasks,
    cloze_builder,
    load_cloze_file,
    load_task,
    task_file,
)
from splitfed.tasks.metrics import accuracy, macro_f1
from splitfed.tasks.passages import PASSAGE_TEMPLATES, multirc_examples, record_examples
from splitfed.tasks.registry import (
    SHIPPED_TASKS,
    DataError,
    TaskData,
    load_examples,
    load_task_data,
    resolve_task,
    select_examples,
)
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
    wic_example,
    wsc_example,
)
from splitfed.tasks.text_metrics import exact_match, normalize_answer, rouge, squad_f1, token_f1

__all__ = [
    "CLOZE_TASKS", "DATA_DIR", "FORMATS", "GENERATION_TEMPLATES", "IGNORE_INDEX", "PASSAGE_TEMPLATES",
    "SHIPPED_TASKS", "TASKS", "TEMPLATES", "ClozeExample", "GenerateFn", "GenerationExample", "LogitsFn",
    "TaskData", "TaskSpec", "accuracy", "answer_logprobs", "available_tasks", "boolq_example",
    "cb_example", "cloze_builder", "collate", "copa_example", "coqa_examples", "custom_cloze",
    "custom_generation", "DataError", "select_examples", "encode_example", "encode_generation",
    "encode_options", "evaluate_cloze",
    "evaluate_generation", "exact_match", "fill", "generate_answers", "join_prompt_option",
    "load_cloze_file", "load_examples", "load_task", "load_task_data", "macro_f1", "multirc_examples",
    "normalize_answer", "option_token_ids", "predict", "read_rows", "record_examples", "render_prompt",
    "resolve_task", "rouge", "rte_example", "score_options", "squad_f1", "task_file", "token_f1",
    "wic_example", "wsc_example", "xsum_examples",
]
