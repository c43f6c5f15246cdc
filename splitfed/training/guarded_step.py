"""An optimizer step that cannot poison what it updates.

A gradient that came (through the trunk) from a peer may be non-finite, or finite but so large that
AdamW's second moment overflows (|g| > ~1.8e19 squares past float32's range) or freezes the adapter for
thousands of steps. ``guarded_step`` refuses a step whose gradients are not finite or not bounded, and
rolls back a step after which a parameter or an optimizer state would be non-finite: the parameters and
the optimizer state are then exactly what they were before, and the gradients are cleared.
"""

from __future__ import annotations

import logging

import torch

from splitfed.finite import all_finite

log = logging.getLogger(__name__)

GRADIENT_ELEMENT_LIMIT = 1e15  # beyond this, g**2 in AdamW's second moment comes near float32's range


def _parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [value for state in optimizer.state.values() for value in state.values()
            if isinstance(value, torch.Tensor)]


def guarded_step(optimizer: torch.optim.Optimizer, what: str = "adapter") -> bool:
    """``optimizer.step()`` unless it would make anything non-finite; the gradients are cleared either
    way. Returns False (and logs why) when the step was refused or rolled back."""
    parameters = _parameters(optimizer)
    grads = [p.grad for p in parameters if p.grad is not None]
    try:
        if not all_finite(grads):
            log.warning("%s step dropped: its gradient is not finite", what)
            return False
        largest = max((float(g.abs().max()) for g in grads if g.numel()), default=0.0)
        if largest > GRADIENT_ELEMENT_LIMIT:
            log.warning("%s step dropped: a gradient element of %.3g exceeds %.0e", what, largest,
                        GRADIENT_ELEMENT_LIMIT)
            return False
        before_params = [p.detach().clone() for p in parameters]
        before_state = {id(p): {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                        for p, s in optimizer.state.items()}
        optimizer.step()
        if all_finite(parameters) and all_finite(_state_tensors(optimizer)):
            return True
        with torch.no_grad():
            for parameter, saved in zip(parameters, before_params, strict=True):
                parameter.copy_(saved)
        for parameter in list(optimizer.state):
            saved_state = before_state.get(id(parameter))
            if saved_state is None:
                del optimizer.state[parameter]
            else:
                optimizer.state[parameter] = saved_state
        log.warning("%s step rolled back: it would have made a parameter or the optimizer state non-finite",
                    what)
        return False
    finally:
        optimizer.zero_grad(set_to_none=True)
