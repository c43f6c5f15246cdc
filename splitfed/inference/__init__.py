"""Split inference on the client: sampling, the generation loop with per-part KV caches, streamed text."""

from splitfed.endpoints import GenerationEndpoint, StaleCacheError
from splitfed.inference.endpoint import LocalGeneration
from splitfed.inference.generator import SplitGenerator
from splitfed.inference.sampling import SamplingSettings, TokenChooser
from splitfed.inference.text import ChatSession, TextStream, encode_prompt, stream_text

__all__ = [
    "ChatSession",
    "GenerationEndpoint",
    "LocalGeneration",
    "SamplingSettings",
    "SplitGenerator",
    "StaleCacheError",
    "TextStream",
    "TokenChooser",
    "encode_prompt",
    "stream_text",
]
