"""The one exception type for user mistakes: its message names the problem and the fix."""


class PyroVAEError(Exception):
    """A mistake in the user's input (config, data, run folder, checkpoint).

    The command-line interface prints its message as one line and exits with status 2.
    """


class Interrupted(PyroVAEError):
    """Training stopped by SIGINT or SIGTERM after writing a checkpoint; ``exit_code`` is 128 + signal."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


class Reported(PyroVAEError):
    """Under ``torchrun``: an error rank 0 met and prints; the other ranks stop with it and print nothing."""
