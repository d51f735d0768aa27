"""Adam as one torch optimizer over every parameter, inside Pyro's optimizer interface.

``pyro.optim.Adam`` keeps one ``torch.optim.Adam`` per parameter and steps them one by one; this
``PyroOptim`` steps all parameters in one fused (or multi-tensor) kernel call, ordered by their
names in Pyro's param store so that saved optimizer state restores onto the same tensors.
"""
import pyro
import torch
from pyro.optim import PyroOptim

from .errors import PyroVAEError


class GroupedAdam(PyroOptim):
    """Adam(lr) over all parameters at once, with optional gradient clipping by global norm."""

    def __init__(self, lr, clip_norm=0.0):
        super().__init__(torch.optim.Adam, {"lr": lr})
        self.lr, self.clip_norm = lr, clip_norm
        self.optimizer, self.waiting_state = None, None

    def __call__(self, params, *args, **kwargs):
        if self.optimizer is None:
            self.optimizer = self.build(params)
        elif len(params) != len(self.params):
            raise PyroVAEError("the set of trained parameters changed between steps; rebuild the trainer")
        if self.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # so SVI's zero_grads has no zero tensors to allocate

    def build(self, params):
        names = {id(p): name for name, p in pyro.get_param_store().named_parameters()}
        self.params = sorted(params, key=lambda p: names.get(id(p), ""))
        device = self.params[0].device
        fused = device.type in ("cpu", "cuda") and all(p.dtype in (torch.float32, torch.float64) for p in self.params)
        optimizer = torch.optim.Adam(self.params, lr=self.lr, fused=fused or None)
        if self.waiting_state is not None:
            self.load(optimizer, self.waiting_state)
        return optimizer

    def load(self, optimizer, state):
        """Adam's saved moments and step counts, with this optimizer's learning rate (a resume may change it)."""
        optimizer.load_state_dict(state)
        for group in optimizer.param_groups:
            group["lr"] = self.lr

    def get_state(self):
        return self.optimizer.state_dict() if self.optimizer is not None else self.waiting_state

    def set_state(self, state):
        if self.optimizer is None:
            self.waiting_state = state
        else:
            self.load(self.optimizer, state)
