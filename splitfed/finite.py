"""Finiteness checks on tensors, for everything that must never hold or write a NaN or an infinity."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True when every element of every floating-point tensor is finite."""
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def nonfinite_names(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors holding a NaN or an infinity."""
    return [name for name, tensor in tensors.items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


class NonFiniteError(ValueError):
    """Tensors that were to be kept or written hold a NaN or an infinity."""

    def __init__(self, what: str, names: list[str]) -> None:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        super().__init__(f"{what}: {len(names)} tensor(s) hold non-finite values ({shown}); not written")
        self.names = names


def check_finite(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise ``NonFiniteError`` naming the tensors of ``tensors`` that are not finite."""
    names = nonfinite_names(tensors)
    if names:
        raise NonFiniteError(what, names)
