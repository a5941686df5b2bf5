"""A small TCP proxy for fault tests: forwards loopback connections to a target, and can
blackhole them without closing.

`blackhole()` makes the links behave like a dead WiFi/NAT path: neither side's bytes (nor a
FIN) reach the other, yet neither socket is closed, so each end only finds out through its own
timeouts (MQTT keepalive). What arrives meanwhile is held, in order, as TCP would keep
retransmitting it: `resume()` delivers it and forwarding goes on, so a link that heals before
either end gives up carries on with an intact byte stream.

By default only the connections open at the time are blackholed and new ones are forwarded (a
device that redials gets a fresh path, as after a NAT entry died); `blackhole(new=True)` also
swallows new connections (accepted, then silent).

    with TcpProxy(broker.port) as proxy:       # clients connect to proxy.port / proxy.url
        proxy.blackhole()
        proxy.wait_for(lambda p: p.opened >= 2, 10, "a second connection")
        proxy.resume()

One thread runs a selector over the listening socket and every connection.
"""
import selectors
import socket
import threading
import time

_CHUNK = 65536


class _Link:
    """One client connection and its connection to the target."""

    def __init__(self, n, client, upstream, held):
        self.n = n
        self.sides = {client: upstream, upstream: client}   # socket -> the socket it feeds
        self.out = {client: bytearray(), upstream: bytearray()}  # bytes waiting to be written to that socket
        self.eof = {client: False, upstream: False}          # that socket has sent its FIN
        self.shut = {client: False, upstream: False}         # we shut down writing to that socket
        self.client, self.upstream = client, upstream
        self.held = held
        self.opened_at = time.monotonic()
        self.closed_at = None

    def socks(self):
        return (self.client, self.upstream)


class TcpProxy:
    def __init__(self, target_port, target_host="127.0.0.1", port=0, host="127.0.0.1"):
        self.target = (target_host, target_port)
        self._listen = socket.socket()
        self._listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listen.bind((host, port))
        self._listen.listen(16)
        self._listen.setblocking(False)
        self.host, self.port = self._listen.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._links = {}            # socket -> _Link
        self._cond = threading.Condition()
        self._holding = False       # existing links are blackholed
        self._hold_new = False      # new links are blackholed too
        self._stopping = False
        self._thread = None
        # what tests wait on and report
        self.opened = 0             # connections accepted and connected to the target
        self.refused = 0            # accepted but the target refused (the client is closed at once)
        self.closed = 0             # links fully closed
        self.forwarded = 0          # bytes delivered (both directions)
        self.held = 0               # bytes held back by a blackhole so far (both directions)
        self.ended = 0              # ends of stream (FIN or reset) seen from either side
        # (monotonic time, kind, link n[, side]): "open", "close", "refused", "blackhole", "resume", and
        # "end" with side "client" or "target" when that end closed (FIN or reset), held or not
        self.events = []

    @property
    def url(self):
        return "mqtt://%s:%d" % (self.host, self.port)

    # -- control (any thread) -----------------------------------------------------------------

    def start(self):
        self._sel.register(self._listen, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name="tcpproxy:%d" % self.port, daemon=True)
        self._thread.start()
        return self

    def blackhole(self, new=False):
        """From now on deliver nothing on the open connections (and on new ones if `new`)."""
        with self._cond:
            self._holding = True
            self._hold_new = new
            for link in set(self._links.values()):
                link.held = True
            self.events.append((time.monotonic(), "blackhole", None))
        self._wake()

    def resume(self):
        """Deliver what was held, in order, and forward again."""
        with self._cond:
            self._holding = self._hold_new = False
            for link in set(self._links.values()):
                link.held = False
            self.events.append((time.monotonic(), "resume", None))
        self._wake()

    def open_links(self):
        with self._cond:
            return len(set(self._links.values()))

    def wait_for(self, predicate, timeout=10.0, what="condition"):
        """Wait (bounded) until predicate(self) is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("tcpproxy :%d: no %s within %.0f s" % (self.port, what, timeout))
                self._cond.wait(min(left, 0.5))

    def stop(self, timeout=10.0):
        with self._cond:
            self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for sock in list(self._links):
            sock.close()
        self._links.clear()
        self._sel.close()
        self._listen.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _wake(self):
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # -- the selector thread --------------------------------------------------------------------

    def _run(self):
        while True:
            with self._cond:
                if self._stopping:
                    return
                self._update_interest()
            for key, mask in self._sel.select(0.5):
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                elif mask & selectors.EVENT_READ:
                    self._read(key.data, key.fileobj)
                # writes: below, for every link, once the reads of this round are in
            with self._cond:
                for link in set(self._links.values()):
                    self._flush_all(link)
                self._cond.notify_all()

    def _update_interest(self):
        """Read every socket that has not ended (even while held: the bytes are kept, in order);
        write where bytes wait and the link is not held."""
        for sock, link in self._links.items():
            events = 0
            if not link.eof[sock]:
                events |= selectors.EVENT_READ
            if link.out[sock] and not link.held:
                events |= selectors.EVENT_WRITE
            try:
                key = self._sel.get_key(sock)
            except KeyError:
                key = None
            if key is None and events:
                self._sel.register(sock, events, link)
            elif key is not None and not events:
                self._sel.unregister(sock)
            elif key is not None and key.events != events:
                self._sel.modify(sock, events, link)

    def _accept(self):
        try:
            client, _ = self._listen.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            with self._cond:
                self.refused += 1
                self.events.append((time.monotonic(), "refused", None))
            return
        for s in (client, upstream):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._cond:
            self.opened += 1
            link = _Link(self.opened, client, upstream, self._hold_new)
            self._links[client] = self._links[upstream] = link
            self.events.append((time.monotonic(), "open", link.n))
        for s in link.socks():
            self._sel.register(s, selectors.EVENT_READ, link)

    def _read(self, link, sock):
        try:
            data = sock.recv(_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = None             # reset: treated as an end of stream
        with self._cond:
            if not data:
                link.eof[sock] = True   # interest is updated before the next select
                self.ended += 1
                self.events.append((time.monotonic(), "end", link.n, "client" if sock is link.client else "target"))
                return
            link.out[link.sides[sock]] += data
            if link.held:
                self.held += len(data)

    def _flush_all(self, link):
        """Push what can go now; pass on a FIN once its bytes are out; close a finished link."""
        if link.held or link.closed_at is not None:
            return
        for sock in link.socks():
            if link.out[sock]:
                try:
                    n = sock.send(link.out[sock])
                except BlockingIOError:
                    continue
                except OSError:
                    self._close(link)
                    return
                del link.out[sock][:n]
                self.forwarded += n
            source = link.sides[sock]
            if link.eof[source] and not link.out[sock] and not link.shut[sock]:
                link.shut[sock] = True
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        if all(link.eof.values()) and all(link.shut.values()):
            self._close(link)

    def _close(self, link):
        for s in link.socks():
            self._links.pop(s, None)
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        link.closed_at = time.monotonic()
        self.closed += 1
        self.events.append((link.closed_at, "close", link.n))
