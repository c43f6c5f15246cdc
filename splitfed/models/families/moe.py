"""Mixture-of-experts decoders laid out like Llama: Mixtral, Qwen2-MoE, Qwen3-MoE."""

from __future__ import annotations

from splitfed.models.families.llama import LlamaStyleFamily


class MoeFamily(LlamaStyleFamily):
    """Mixtral, Qwen2-MoE (with its shared expert and dense ``mlp_only_layers``) and Qwen3-MoE.

    Router and experts sit inside each block's ``mlp`` and a block returns its hidden state alone, so
    every part routes its own tokens with its own blocks' routers and the split equals the whole
    model. LoRA targets the attention projections by default: the experts are 3-D parameters, not
    ``nn.Linear`` modules, and the routers stay frozen.

    The auxiliary load-balancing loss is not trained: splitfed's loss is the language-modelling loss
    alone, in the split and in the centralized baseline. That is HF's ``loss`` when
    ``output_router_logits`` is off, these families' default. With it on, HF adds
    ``router_aux_loss_coef * aux_loss``, a product of per-expert sums over every block's router
    statistics, which spans all three parts; it exists to balance routers that train, and splitfed's
    routers are frozen.
    """

    name = "moe"
    model_types = frozenset({"mixtral", "qwen2_moe", "qwen3_moe"})
