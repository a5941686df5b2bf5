# The cabinet's main loop: WiFi, one persistent MQTT session (umqtt.simple 1.3.4, unchanged),
# credits applied by cabinet.Cabinet inside the subscription callback, acks published here,
# outside it. Link loss of any kind -> reconnect with backoff; the coin line ends idle.
import gc
import sys
import time
import select
import machine
import network
from micropython import const
import umqtt.simple as simple
from umqtt.simple import MQTTClient, MQTTException
import protocol
import inbound
from coin import Coin
from cabinet import Cabinet
from journal import Journal

gc.collect()

_WDT_MS = const(30000)
_BACKOFF_MIN = const(500)
_BACKOFF_MAX = const(30000)
_OUTBOX = const(8)
_PID_MAX = const(65535)
_ETIMEDOUT = const(110)
_ECONNRESET = const(104)
_INHIBIT_POLL = const(200)   # ms: how soon a change of the inhibit line is noticed
_STAT_IDLE = const(1000)      # network.WLAN.status(): not asked to join (ports/esp32/network_wlan.c)
_STAT_NO_AP = const(201)
_STAT_WRONG_PASSWORD = const(202)
_STABLE_MS = const(300000)    # connected this long after boot: the crash count is cleared
_HEARTBEAT = const(60000)    # ms: the status is published at least this often (the relay's freshness)
_SPAN = const(0x100000)      # status numbers reserved per connection; the will takes the top one


class DeadlineSocket:
    # umqtt.simple's check_msg()/wait_msg() call setblocking(True): blocking *forever* on a
    # half-open link. Here it means "blocking with a deadline", so a dead link raises OSError,
    # including in publish()'s wait for PUBACK. A short read (EOF mid-packet) raises too.
    # Over TLS, `sock` is the SSLSocket (no settimeout; its setblocking goes to the TCP socket)
    # and `raw` the TCP socket under it, which carries the timeout.
    def __init__(self, sock, timeout_s, raw=None):
        self.sock = sock
        self.raw = raw or sock
        self.timeout = timeout_s
        self.raw.settimeout(timeout_s)

    def setblocking(self, flag):
        if flag:
            self.raw.settimeout(self.timeout)
        else:
            self.raw.setblocking(False)

    def read(self, n):
        return inbound.read(self.sock, n)     # bounded: one message never costs > MAX_MSG

    def write(self, buf, n=None):
        if n is None:
            return self.sock.write(buf)
        return self.sock.write(buf, n)

    def close(self):
        self.sock.close()


class _TimedSockets:
    # Stands in for the socket module inside umqtt.simple so that connect() and its CONNACK
    # read time out too (they run before we can wrap the socket).
    def __init__(self, mod, timeout_s, feed):
        self.mod = mod
        self.timeout = timeout_s
        self.feed = feed
        self.last = None

    def socket(self, *a):
        s = self.mod.socket(*a)
        s.settimeout(self.timeout)
        # umqtt.simple writes a PUBLISH in several small writes: without TCP_NODELAY each ack
        # waits on Nagle and the broker's delayed ACK. Ports without the option just skip it.
        nd = getattr(self.mod, "TCP_NODELAY", None)
        if nd is not None:
            try:
                s.setsockopt(self.mod.IPPROTO_TCP, nd, 1)
            except OSError:
                pass
        self.last = s
        return s

    def getaddrinfo(self, *a):
        # lwIP's DNS ignores timeouts and blocks for seconds per dead server: feed on both sides
        self.feed()
        r = self.mod.getaddrinfo(*a)
        self.feed()
        return r


def guard_pid(client):
    """umqtt.simple 1.3.4 never wraps its packet id: at 65536 struct.pack fails. Wrap it."""
    if client.pid >= _PID_MAX:
        client.pid = 0


def _print(event, data):
    print(event, data)


def _mem_free():
    f = getattr(gc, "mem_free", None)
    return f() if f else 0


class App:
    def __init__(self, cfg, board, coin, root="", emit=None, crashes=0):
        self.cfg = cfg
        self.emit = emit or _print
        self.coin = coin
        self.sleep_ms = coin.sleep_ms     # the board's one clock (a FakeClock's in tests)
        cab = cfg["cabinet"]
        self.cab = cab
        base = "%s/%s/" % (cfg["prefix"], cab)
        self.t_credit = (base + "credit").encode()
        self.t_ack = (base + "ack").encode()
        self.t_status = (base + "status").encode()
        self.t_config = (base + "config").encode()
        self.t_test = (base + "test").encode()
        self.ka_ms = cfg["keepalive"] * 1000
        self.ping_ms = self.ka_ms // 2
        self.sock_timeout = min(cfg["keepalive"], 10)
        self.led = None
        if board["led_pin"] is not None:
            hi = board["led_active"] == "high"
            self.led = machine.Signal(machine.Pin(board["led_pin"], machine.Pin.OUT,
                                                  value=0 if hi else 1), invert=not hi)
        inhibit = None
        self.poll_cap = _WDT_MS // 4
        if board["inhibit_pin"] is not None:
            from inhibit import Inhibit     # debounced (inhibit.py)
            # null: an external resistor, internal pulls off (Pin's pull=None)
            pull = {"up": machine.Pin.PULL_UP, "down": machine.Pin.PULL_DOWN}.get(
                board["inhibit_pull"])
            inhibit = Inhibit(board["inhibit_pin"], pull, board["inhibit_active"] == "low",
                              coin.ticks_ms)
            self.poll_cap = _INHIBIT_POLL
        self.wdt = None
        self.wlan = network.WLAN(network.STA_IF)
        self.cabinet = Cabinet(cab, cfg["secret"], Journal(root), coin, self._tick, board, inhibit)
        m = cfg["mqtt"]
        user = m["user"].encode() if m["user"] is not None else None
        pswd = m["password"].encode() if m["password"] is not None else None
        # TLS: umqtt.simple does `import ussl; ussl.wrap_socket(sock, **ssl_params)`; brokertls.py
        # maps it to MicroPython's ssl with CERT_REQUIRED, the CA file and the broker's name. It is
        # installed as sys.modules["ussl"]: on 1.22 `import ussl` would return the built-in first
        tls = {"cafile": cfg.get("ca"), "server_hostname": m["host"]} if m["ssl"] else {}
        self.tls = None
        if m["ssl"]:
            import brokertls
            sys.modules["ussl"] = brokertls
            brokertls.feed = self._feed
            self.tls = brokertls
        self.crashes = crashes          # crash resets before this boot (resets.py; in the status)
        self.wifi_err = 0               # the last reason WiFi was down: 201 no AP, 202 password
        self.client = MQTTClient(cab.encode(), m["host"], m["port"], user, pswd,
                                 cfg["keepalive"], m["ssl"], tls)
        self.hosts = m.get("hosts")   # a broker cluster's nodes: the next one after each failure
        self.host_i = 0
        self.up_ms = 0            # uptime from ticks: NTP may set the wall clock after boot
        self.up_at = time.ticks_ms()
        self.sent = None          # the status fields last published (to publish on change)
        self.client.set_callback(self._on_msg)
        self.sn = self.will_n = 0     # status numbers (docs/protocol.md, Status)
        self.sent_at = 0
        self.outbox = []          # (result, ack) for rejected/duplicate; applied acks live in flash
        self.link_bad = False
        self.last_rx = self.ping_at = 0
        self.connects = 0
        self.root = root
        self.ota = None           # the status field `ota` while an update goes on (otalink.py)
        mod = simple.socket
        if isinstance(mod, _TimedSockets):
            mod = mod.mod
        simple.socket = _TimedSockets(mod, self.sock_timeout, self._feed)
        self.screen = None        # board.json `display`: firmware/display.py, loaded only then
        if board.get("display") is not None:
            import display
            self.screen = display.attach(self, board["display"], root)

    # -- time and watchdog
    def _feed(self):
        if self.wdt is not None:
            self.wdt.feed()

    def _sleep(self, ms):
        while ms > 0:
            self._feed()
            step = 1000 if ms > 1000 else ms
            self.sleep_ms(step)
            ms -= step

    def _tick(self):
        # before every pulse: a long pulse train must neither starve the WDT nor let the
        # broker drop us for silence (writing a PINGREQ between packets is safe)
        self._feed()
        c = self.client
        if c.sock is None or self.link_bad:
            return
        now = time.ticks_ms()
        if time.ticks_diff(now, self.ping_at) >= 0:
            try:
                c.ping()
            except OSError:
                self.link_bad = True
            self.ping_at = time.ticks_add(now, self.ping_ms)

    # -- MQTT
    def _on_msg(self, topic, msg):
        # runs inside umqtt.simple (check_msg or publish's PUBACK wait): never publish here
        if not msg:
            return        # a retained message deleted, or one too big (inbound.py): nothing to do
        self._stored(self._apply, topic, msg)

    def _apply(self, topic, msg):
        if topic == self.t_config:
            r = self.cabinet.handle_config(msg)
            self.emit("config", (r, self.cabinet.cfg_error or self.cabinet.cfg["ver"]))
            return
        if topic == self.t_test:
            r = self.cabinet.handle_test(msg)
            self.emit("test", (r, self.cabinet.test_error or self.cabinet.cfg["test"]))
            return
        if topic != self.t_credit:
            if topic.endswith(b"/ota"):
                self._ota(msg)
            return
        result, ack = self.cabinet.handle(msg)
        if result == "held":
            self.emit("held", self.cabinet.held())
            return
        if result != "applied":
            if len(self.outbox) >= _OUTBOX:
                self.outbox.pop(0)
            self.outbox.append(ack)

    def _ota(self, msg=None):
        # over-the-air updates (otalink.py): loaded while one goes on, dropped after it
        import otalink
        if not (otalink.handle(self, self.root, msg) if msg else otalink.at_boot(self, self.root)):
            for m in ("otalink", "ota", "otaboot"):
                sys.modules.pop(m, None)
        self.sent = None

    def _publish(self, topic, msg, retain=False):
        c = self.client
        guard_pid(c)
        c.sock.setblocking(True)
        c.publish(topic, msg, retain, 1)
        self.last_rx = time.ticks_ms()

    def _flush(self):
        while True:
            a = self.cabinet.pending_ack()
            if a is not None:
                self._publish(self.t_ack, a)
                self._stored(self.cabinet.ack_sent, a)
                self.emit("ack", a)
                continue
            if not self.outbox:
                return
            a = self.outbox[0]
            self._publish(self.t_ack, a)
            if self.outbox and self.outbox[0] is a:
                self.outbox.pop(0)
            self.emit("ack", a)

    def info(self):
        """The status fields beyond the protocol's first ones (docs/protocol.md, Status)."""
        cab = self.cabinet
        try:
            rssi = self.wlan.status("rssi")
        except (OSError, ValueError, TypeError):
            rssi = 0
        self._uptime()
        d = {"uptime": self.up_ms // 1000, "heap": _mem_free(), "rssi": rssi,
             "total": cab.state["total"], "inhibited": cab.inhibited(), "held": cab.held(),
             "cfg": cab.cfg["ver"], "width_ms": self.coin.width_ms, "gap_ms": self.coin.gap_ms,
             "cfg_error": cab.cfg_error, "test": cab.cfg["test"], "test_error": cab.test_error,
             "crashes": self.crashes, "wifi": self.wifi_err, "dropped": inbound.dropped,
             "clock": protocol.clock(),
             "ota": self.ota}
        if self.screen is not None:
            d["display"] = self.screen.error or "ok"
        return d

    def _uptime(self):
        # accumulated each loop turn, so ticks wrapping (every ~12 days) never shows
        now = time.ticks_ms()
        self.up_ms += time.ticks_diff(now, self.up_at)
        self.up_at = now

    def _status(self, force=False):
        # publish (retained) on connect and whenever a field other than uptime/heap/rssi changed
        cab = self.cabinet
        s = cab.state
        key = (s["ledger"], s["last"], s["total"], cab.inhibited(), cab.held(), cab.cfg["ver"],
               cab.cfg_error, cab.cfg["test"], cab.test_error, inbound.dropped, self.ota)
        if not force and key == self.sent and \
                time.ticks_diff(time.ticks_ms(), self.sent_at) < _HEARTBEAT:
            return
        info = self.info()
        self.sn += 1
        self._publish(self.t_status, protocol.status(cab.key, self.cab, True,
                                                     (s["epoch"], s["boots"], self.sn),
                                                     s["ledger"], s["last"], info), True)
        self.sent = key
        self.sent_at = time.ticks_ms()
        info["ledger"], info["last"] = s["ledger"], s["last"]
        self.emit("status", info)

    def _will(self):
        # each connection: a signed offline will, numbered above this connection's statuses
        self.sn = self.will_n
        self.will_n = self.sn + _SPAN
        s = self.cabinet.state
        self.client.set_last_will(self.t_status, protocol.status(
            self.cabinet.key, self.cab, False, (s["epoch"], s["boots"], self.will_n)), True, 1)

    def _wifi(self):
        # connect() once: from then on the driver rejoins by itself, and a second connect() while
        # it is trying raises "Wifi Internal Error" (C3/S3). status() says why it is not up.
        w = self.wlan
        if not w.isconnected():
            if not w.active():
                w.active(True)
            for _ in range(200):
                st = w.status()
                if w.isconnected():
                    break
                if st == _STAT_IDLE:
                    w.connect(self.cfg["wifi_ssid"], self.cfg["wifi_password"])
                elif (st == _STAT_NO_AP or st == _STAT_WRONG_PASSWORD) and st != self.wifi_err:
                    self.wifi_err = st
                    self.emit("wifi", st)
                self._feed()
                self.sleep_ms(100)
            else:
                raise OSError(_ETIMEDOUT)
        if self.tls is not None:
            # the clock, for the certificate dates: now, before any broker socket is open
            self._feed()
            self.tls.set_clock()
            self._feed()

    def _connect(self):
        c = self.client
        self.link_bad = False
        self._will()
        try:
            c.connect(False)
        except (IndexError, TypeError):
            # the peer closed before the 4-byte CONNACK (a plain client on a TLS port, a broker at
            # max_connections): umqtt indexes an empty read. A lost link, not a crash.
            raise OSError(_ECONNRESET)
        self._feed()
        c.sock = DeadlineSocket(c.sock, self.sock_timeout, simple.socket.last)
        now = time.ticks_ms()
        self.last_rx = now
        self.ping_at = time.ticks_add(now, self.ping_ms)
        # each SUBACK and the status PUBACK may take a socket timeout: feed before each
        for t in (self.t_config, self.t_test, self.t_credit, self.t_credit[:-6] + b"ota"):   # config first
            self._feed()
            guard_pid(c)
            c.subscribe(t, 1)
        self._feed()
        self._status(True)
        self._feed()
        self.connects += 1
        if self.led is not None:
            self.led.on()
        if self.screen is not None:
            self.screen.link(True)
        self.emit("connected", None)

    def _next_host(self):
        # a failed connect or a dropped link: the next node of the list (umqtt.simple resolves
        # server:port on each connect); TLS checks the name of the node it connects to
        self.host_i = (self.host_i + 1) % len(self.hosts)
        c = self.client
        c.server, c.port = self.hosts[self.host_i]
        if c.ssl:
            c.ssl_params["server_hostname"] = c.server

    def _close(self):
        if self.led is not None:
            self.led.off()
        c = self.client
        if c.sock is not None:
            try:
                c.sock.close()
            except OSError:
                pass
            c.sock = None

    def _stored(self, fn, *a):
        # a cabinet call that writes flash: an OSError from it is the flash, not the link, and RAM
        # is now ahead of flash. RuntimeError is not taken for a lost link: it escapes to main.py,
        # which logs it and resets, and the board boots into the journal's state (recover()
        # finishes a cut credit, never a pulse twice). The broker had no PUBACK: it redelivers.
        try:
            return fn(*a)
        except OSError as e:
            raise RuntimeError("flash write failed: %r" % (e,))

    def _step(self):
        # each turn of the loop: a held credit whose inhibit cleared, pending acks, status changes
        self._feed()
        if not self.wlan.isconnected():
            raise OSError(_ETIMEDOUT)       # WiFi is down: drop the link now, not a keepalive later
        self._uptime()
        if self.crashes and self.up_ms >= _STABLE_MS:
            machine.RTC().memory(b"")       # connected long enough: the reset loop is over
            self.crashes = 0
        if self._stored(self.cabinet.resume) is not None:
            self.emit("resumed", self.cabinet.state["last"])
        self._flush()
        self._status()
        if self.screen is not None:
            self.screen.update()

    def _serve(self):
        c = self.client
        poller = select.poll()
        poller.register(c.sock.sock, select.POLLIN)
        while True:
            self._step()
            if self.link_bad:
                raise OSError(_ETIMEDOUT)
            now = time.ticks_ms()
            dead_at = time.ticks_add(self.last_rx, self.ka_ms)
            wait = min(time.ticks_diff(self.ping_at, now), time.ticks_diff(dead_at, now),
                       self.poll_cap)
            self._feed()
            if poller.poll(wait if wait > 0 else 0):
                self.last_rx = time.ticks_ms()
                c.check_msg()
                continue
            now = time.ticks_ms()
            if time.ticks_diff(now, time.ticks_add(self.last_rx, self.ka_ms)) >= 0:
                # nothing from the broker (not even PINGRESP) for a whole keepalive: half-open
                raise OSError(_ETIMEDOUT)
            if time.ticks_diff(now, self.ping_at) >= 0:
                c.sock.setblocking(True)
                c.ping()
                self.ping_at = time.ticks_add(now, self.ping_ms)

    def boot(self):
        """Finish a credit cut by a power loss (its ack is then queued in flash)."""
        left = self.cabinet.recover()
        s = self.cabinet.state
        self.emit("boot", {"recovered": left is not None, "pulses": left or 0,
                           "journal": self.cabinet.journal.note, "ledger": s["ledger"],
                           "last": s["last"], "crashes": self.crashes, "epoch": s["epoch"]})
        self._ota()

    def run(self):
        self.wdt = machine.WDT(timeout=_WDT_MS)
        self.boot()
        backoff = _BACKOFF_MIN
        while True:
            try:
                self._wifi()
                self._connect()
                backoff = _BACKOFF_MIN
                self._serve()
            except (OSError, MQTTException, AssertionError, MemoryError) as e:
                # MemoryError too: a reconnect (gc.collect below) frees what the turn held; a
                # reset would lose the session and bring back whatever caused it
                self.emit("disconnected", repr(e))
                if self.screen is not None:
                    self.screen.link(False)
                if self.hosts:
                    self._next_host()
            self._close()
            gc.collect()
            self._sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    def shutdown(self):
        """Best effort on a clean stop: say offline (retained) and close."""
        c = self.client
        if c.sock is None:
            return
        try:
            c.sock.setblocking(True)
            c.publish(self.t_status, c.lw_msg, True, 0)     # the signed offline will
            c.disconnect()
        except OSError:
            pass
        self._close()


def main(root="", emit=None, crashes=0):
    coin = None
    app = None
    try:
        import config      # boot-time only: dropped once read, it stays off the steady-state heap
        try:
            board = config.load_board(root)
            coin = Coin(board["coin_pin"], board["active"] == "high", board["width_ms"],
                        board["gap_ms"])
            cfg = config.load_config(root, board)
        except config.ConfigError as e:
            print("CONFIG ERROR:", e)
            return 1
        finally:
            sys.modules.pop("config", None)
        config = None
        gc.collect()
        app = App(cfg, board, coin, root, emit, crashes)
        app.run()
    finally:
        if coin is not None:
            coin.idle()
        if app is not None:
            app.shutdown()
