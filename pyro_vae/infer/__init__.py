"""Inference, in Pyro's vocabulary: the importance-sampled log p(x) (``importance``), the training
objectives (Pyro's ELBOs, ``objectives``), the generative classifier, the optimizer and learning-rate
schedules. It imports the model layer and the base modules, nothing above."""
