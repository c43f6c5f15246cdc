"""Which parts of the model a client keeps: the one place the layout names are spelled."""

from __future__ import annotations

from enum import StrEnum


class Layout(StrEnum):
    """three-part: the client keeps the head and the tail (labels and logits never leave it);
    two-part: the client keeps only the head, and the server runs every later block, the final norm,
    the LM head and the loss, so it receives the labels. A ``str``, so configs and the wire carry it
    as its value."""

    THREE_PART = "three-part"
    TWO_PART = "two-part"
