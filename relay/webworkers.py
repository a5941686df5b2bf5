"""`arcade relay --workers N`: N-1 more web worker processes on the relay's listening socket (Linux).

The parent (`arcade relay`) binds the socket, forks the workers, then builds its own app, server and
the one dispatcher. Each worker builds its own app (its own ledger connections: nothing of the
parent's is shared after the fork) and serves the same socket with waitress; the kernel hands each
connection to one of the processes. A worker runs no dispatcher: a committed credit wakes the
parent's through a pipe (one byte, non-blocking; a full pipe already holds a wake-up). The workers
die with the parent (PR_SET_PDEATHSIG), also when it is SIGKILLed, and stop on its SIGTERM.

Used by tools/commands/relay.py only; the webhook path does not import it.
"""
import ctypes
import os
import signal
import socket
import sys
import threading

PR_SET_PDEATHSIG = 1


def listen(host, port, backlog=1024):
    """The listening socket every process serves."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class PipeWake:
    """A worker's stand-in for the dispatcher's wake-up Event: set() writes one byte to the pipe."""

    def __init__(self, fd):
        self.fd = fd

    def set(self):
        try:
            os.write(self.fd, b"w")
        except (BlockingIOError, InterruptedError):
            pass        # the pipe is full of wake-ups already
        except OSError:
            pass        # the parent is gone: nothing to wake (this worker is about to die with it)

    def is_set(self):
        return False


def start(n, serve):
    """Fork `n` workers, each running serve(wake) (which builds its app and serves; it returns when the
    worker stops). Returns (pids, read end of the wake pipe) in the parent."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    pids = []
    for _ in range(n):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:                                    # the worker
            code = 1
            try:
                os.close(r)
                try:
                    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
                except (OSError, AttributeError):
                    pass
                if os.getppid() == 1:                   # the parent died before prctl: stop now
                    os._exit(0)
                serve(PipeWake(w))
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 0
            except BaseException:                       # reported, then the worker exits
                import traceback
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    os.close(w)
    return pids, r


def relay_wakes(fd, wake, stopping):
    """In the parent: a thread that turns the workers' bytes into wake.set() for the dispatcher."""
    def run():
        while not stopping.is_set():
            try:
                data = os.read(fd, 4096)
            except InterruptedError:
                continue
            except OSError:
                return
            if not data:        # every worker closed its end
                return
            wake.set()
    thread = threading.Thread(target=run, name="worker-wakes", daemon=True)
    thread.start()
    return thread


def stop(pids, timeout=10.0):
    """SIGTERM the workers and reap them (SIGKILL after `timeout`)."""
    import time
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    left = set(pids)
    while left:
        for pid in list(left):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                left.discard(pid)
        if not left:
            break
        if time.monotonic() > deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
            break
        time.sleep(0.05)
