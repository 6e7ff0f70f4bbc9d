"""How a Consortium process meets signals: SIGTERM ends it as Ctrl-C does, quietly. Used by every
command that runs something until stopped (a job, the MLflow UI, the model server), so it belongs
to no one layer of them."""
from __future__ import annotations

import logging
import signal
import threading


def quiet_after_interrupt() -> None:
    """Ctrl-C / SIGTERM: the job ends with one line of ours. As the runtime goes, Flower's threads
    log each in-flight message's failure with a traceback and dying threads print theirs: from here
    on, neither reaches the console (the run is already being marked KILLED)."""
    import sys

    for name in ("flwr", "ray", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    threading.excepthook = lambda args: None
    sys.unraisablehook = lambda unraisable: None


def _stop(signum, frame):
    # Quiet first: Flower's own interrupt handling stops the simulation's actors at once, and its
    # threads log each in-flight message's failure before our handler further up would run.
    quiet_after_interrupt()
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """SIGTERM ends a job like Ctrl-C does: the run is marked KILLED and keeps what it logged; for
    both, the console goes quiet the moment the signal arrives (one line of ours, no traceback).

    Called again after ray.init(), which installs a handler of its own that aborts the process.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
