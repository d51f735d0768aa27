"""One lock for the code that runs Pyro: its handler stack (``poutine``) and param store are global to
the process, so two threads tracing at once would see each other's handlers. The entry points that
run Pyro (``train``, ``importance_sample`` and what calls it) hold it, so calls from several threads
are serialized and each gives the result it would alone."""

import threading

PYRO_LOCK = threading.RLock()
