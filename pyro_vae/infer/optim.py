"""Adam over every parameter of a VAE as one torch optimizer, stepping them in one fused kernel call.

Parameters are ordered by the names Pyro's param store gives them (``vae0.decoder$$$net.0.weight``,
…), the order in which checkpoints have always stored Adam's moments, so saved state restores onto
the same tensors.
"""

import torch

PARTS = (
    "encoder",
    "up",
    "decoder",
    "down",
    "prior",
    "likelihood",
    "classifier",
)  # the order the guide, then the model, register them; the classifier q(y|x) is M2's


def ordered_parameters(vae):
    """The VAE's trainable parameters sorted by param-store name; a parameter two parts share (the
    VampPrior's encoder) is named by the part that registers it last, as in the param store."""
    names, params = {}, {}
    for part in PARTS:
        module = getattr(vae, part, None)  # the encoder is None in a model without a latent
        for name, p in module.named_parameters() if module is not None else ():
            if p.requires_grad:
                names[id(p)], params[id(p)] = f"{part}$$${name}", p
    return [params[key] for key in sorted(params, key=names.get)]


def adam(vae, lr, eps=1e-8):
    """``torch.optim.Adam(lr, eps)`` over ``ordered_parameters(vae)``, fused where the device and dtypes allow."""
    params = ordered_parameters(vae)
    fused = params[0].device.type in ("cpu", "cuda") and all(p.dtype in (torch.float32, torch.float64) for p in params)
    return torch.optim.Adam(params, lr=lr, eps=eps, fused=fused or None)


def load_adam_state(optimizer, state, lr):
    """Adam's saved moments and step counts, with learning rate ``lr`` (a resume may change it)."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["lr"] = lr
