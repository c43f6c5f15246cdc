"""Models: loading, family adapters, the head/trunk/tail split, adapters, export and generation.

This is the only package that touches transformers internals.
"""

from splitfed.models.adapters import (
    AdapterError,
    AdapterSpec,
    LoraSpec,
    PrefixSpec,
    adapter_state,
    add_adapter,
    init_adapter,
    load_adapter,
    load_adapter_state,
    save_adapter,
    trainable_parameters,
)
from splitfed.models.embeddings import head_token_embeddings, token_embedding_matrix
from splitfed.models.export import export_merged
from splitfed.models.families import UnsupportedModelError, hidden_size, max_positions, supported_model_types
from splitfed.models.generation import generate_greedy, iter_greedy
from splitfed.models.loading import DEFAULT_MODEL, ModelNotFoundError, accepted_models, load_model
from splitfed.models.parts import (
    HeadPart,
    SplitPart,
    TailPart,
    TrunkPart,
    positions_from_mask,
    set_training,
)
from splitfed.models.sparse import (
    SparseSpec,
    add_sparse,
    load_sparse_state,
    select_and_add_sparse,
    sparse_parameter_count,
    sparse_state,
)
from splitfed.models.split import (
    Partition,
    PartitionError,
    PrivacyWarning,
    SplitModel,
    num_layers,
    split_model,
)
from splitfed.models.whole import whole_logits

__all__ = [
    "whole_logits",
    "hidden_size",
    "max_positions",
    "DEFAULT_MODEL",
    "AdapterError",
    "AdapterSpec",
    "HeadPart",
    "LoraSpec",
    "ModelNotFoundError",
    "Partition",
    "PartitionError",
    "PrefixSpec",
    "PrivacyWarning",
    "SparseSpec",
    "SplitModel",
    "SplitPart",
    "TailPart",
    "TrunkPart",
    "UnsupportedModelError",
    "accepted_models",
    "adapter_state",
    "add_adapter",
    "add_sparse",
    "load_sparse_state",
    "select_and_add_sparse",
    "sparse_parameter_count",
    "sparse_state",
    "init_adapter",
    "export_merged",
    "generate_greedy",
    "iter_greedy",
    "load_adapter",
    "load_adapter_state",
    "load_model",
    "num_layers",
    "positions_from_mask",
    "set_training",
    "save_adapter",
    "split_model",
    "supported_model_types",
    "head_token_embeddings",
    "token_embedding_matrix",
    "trainable_parameters",
]
