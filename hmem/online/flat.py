"""One contiguous tensor for a module's parameters and one for their gradients.

An online step updates a whole module from a single window, tens of thousands of times. With its
parameters as views into one buffer, AdamW, gradient clipping and zeroing each run once over one
tensor instead of once per parameter: the per-tensor overhead of the optimiser was a third of
a CHRC step. The module keeps working as before (its parameters are views of the buffer, and
autograd accumulates their gradients into views of the gradient buffer in place), so
``state_dict`` and ``load_state_dict`` are unchanged.

Flatten after the module is on its final device: ``.to()`` would copy parameters out of the views.
"""

from __future__ import annotations

import torch
from torch import nn


def flatten_parameters(params: list[nn.Parameter]) -> nn.Parameter:
    """Make ``params`` views of one new flat parameter with a zeroed flat ``.grad``; return it."""
    if not params:
        raise ValueError("flatten_parameters needs at least one parameter")
    first = params[0]
    total = sum(p.numel() for p in params)
    flat = nn.Parameter(torch.empty(total, dtype=first.dtype, device=first.device))
    flat.grad = torch.zeros_like(flat)
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            flat[offset : offset + n].copy_(p.reshape(-1))
            p.data = flat.data[offset : offset + n].view_as(p)
            p.grad = flat.grad[offset : offset + n].view_as(p)
            offset += n
    return flat
