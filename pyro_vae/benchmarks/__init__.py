"""``pyro-vae bench``: the trainer and evaluator against plain-PyTorch reference loops, outside the
library's core (nothing in the library imports it)."""
