"""What the commands report from run folders: the ``evaluate`` command's evaluation, ``compare``,
``gradvar``, the pictures (``plots``) and TensorBoard (``board``)."""
