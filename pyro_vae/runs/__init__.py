"""What a run is made of: its configuration (``config``), data (``datasets``), the experiment built from
both, the run folder with its checkpoint and lock (``folders``), and safe file writing (``files``)."""

from . import codes  # noqa: F401  (registers the dataset ``codes``: a trained run's encoder as features)
