"""A job the relay process runs in a thread every so often: reconciliation with Stripe, alert checks,
automatic refunds. One place for the thread, its stop and its error handling."""
import logging
import threading

from relay.ledger import StorageError

log = logging.getLogger("arcade.periodic")


class Job:
    """Calls run_once() every `every` seconds in a daemon thread until stop() (first at start when
    `first_now`). An error in one run is logged and the next run comes as usual."""
    thread_name = "arcade-job"
    first_now = True
    gate = None     # callable(thread name) -> bool, asked before every run; False skips it (relay/leadership.py)

    def __init__(self, every):
        self.every = float(every)
        self._stop = threading.Event()
        self._thread = None

    def start(self, gate=None):
        if gate is not None:
            self.gate = gate
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=10.0):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self):
        if self.first_now:
            self._once()
        while not self._stop.wait(self._wait()):
            self._once()

    def _wait(self):
        """Seconds until the next run."""
        return self.every

    def _once(self):
        try:
            if self.gate is not None and not self.gate(self.thread_name):
                return
            self.run_once()
        except StorageError as e:
            log.error("%s: database: %s; next run in %.0f s", self.thread_name, e, self.every)
        except Exception:
            log.exception("%s: failed; next run in %.0f s", self.thread_name, self.every)

    def run_once(self):
        raise NotImplementedError
