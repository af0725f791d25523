"""An exponential moving average of a model's weights (Polyak averaging, as taming/SimVQ's
``LitEma`` with a fixed decay):

    shadow <- decay * shadow + (1 - decay) * w      after every optimizer step

over every floating-point parameter; buffers (EMA codebook tables, usage counts, norm
statistics) are not averaged: the averaged model takes the live model's. The shadow starts at
the weights it is built from. It is a checkpointed object (``state_dict``), so a resumed run
ends with the same average as an uninterrupted one.
"""
from __future__ import annotations

import torch
from torch import nn

from ..torchio import cpu_state_dict


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
        self.names = [n for n, _ in named]
        # The parameter objects themselves: loading a state dict or compiling copies into them,
        # so they stay the model's for the whole run (update needs no lookup per step).
        self.params = [p for _, p in named]
        self.shadow = [p.detach().clone().float() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average over the parameters of the model it was built from."""
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - self.decay)

    def averaged_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``model``'s state dict (on the CPU) with every averaged parameter replaced by its shadow."""
        state = cpu_state_dict(model)
        for name, s in zip(self.names, self.shadow):
            state[name] = s.to(state[name].dtype).cpu()
        return state

    def state_dict(self) -> dict:
        return {"decay": self.decay, "names": list(self.names), "shadow": list(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        if state["names"] != self.names:
            raise ValueError("the checkpoint's weight EMA covers other parameters than this model's")
        for s, saved in zip(self.shadow, state["shadow"]):
            s.copy_(saved)
