"""The model and its components: the VAE p(z) p(x|z) with its guide q(z|x) (``vae``), the registries of
priors, likelihoods, networks and conditions, the shapes they share (``spec``).
It imports nothing of the layers above it (inference, runs, reports, training)."""
