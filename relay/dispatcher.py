"""The dispatcher: turns committed credits into QoS 1 MQTT messages, one in flight per cabinet.

SQLite: one persistent paho-mqtt session (MQTT 5, fixed client id, clean_start False, never
expiring) per database, guarded by a file lock beside it, so however many web workers or relay
processes serve webhooks, one client id talks to the broker. PostgreSQL: every relay process runs a
dispatcher with its own client id (ARCADE_RELAY_NAME) and dispatches only the cabinets whose lease it
holds (relay/leases.py: taken, renewed and fenced there; this module asks `valid()` before every publish).
The database is the source of truth: on every (re)connect and every wake the dispatcher reads the
lowest unacknowledged credit of each cabinet and (re)publishes it, so a relay killed between commit
and publish, or between publish and ack, delivers after restart.

Threads: paho's network thread only queues what it hears (connect, PUBACK, messages) and wakes the
worker; the worker thread does the database work and publishing, each step under the dispatcher's
lock. One shortcut, under that lock too: a webhook of this process whose credit is its cabinet's
only unacknowledged one has it marked published in its own transaction and publishes it from its
own thread once committed (first_publish / publish_first), the worker's wake-up, read and write
saved from the path to the first coin.

Per cabinet:   queued --publish--> (PUBACK) sent --verified ack--> applied | duplicate | rejected
               rejected/stale_seq: re-sequence past the cabinet's `last`, publish again.
An unacknowledged credit is republished (same bytes) after ARCADE_ACK_TIMEOUT, doubling up to
ARCADE_ACK_TIMEOUT_MAX, at once when its cabinet announces itself online, and on reconnect.
"""
import collections
import json
import logging
import socket
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from relay import backends, expiry, leases, protocol, screenlines
from relay.config import mask_url, parse_mqtt_urls
from relay.ledger import StorageError, open_ledger

log = logging.getLogger("arcade.dispatcher")
# Seconds after (re)connecting to wait for the broker's retained configs before publishing again those
# it did not send back (retained messages follow the SUBACK at once; this only has to outlast a round trip).
CONFIG_CHECK_AFTER = 3.0


class _Flight:
    """The one credit in flight for a cabinet."""
    __slots__ = ("cab", "session", "seq", "pulses", "payload", "since", "attempts", "next_retry", "warned", "row",
                 "epoch", "online_resend_at")

    def __init__(self, row, payload, since, epoch=""):
        self.cab, self.session, self.seq, self.pulses = row["cabinet_id"], row["session_id"], row["seq"], row["pulses"]
        self.row = row              # to sign it again for a new epoch
        self.epoch = epoch          # the cabinet epoch it is signed for
        self.online_resend_at = 0.0 # no resend on an "online" status before this (a storm of them costs nothing)
        self.payload = payload
        self.since = since          # when the payment was queued (for the stuck warning)
        self.attempts = 0
        self.next_retry = None
        self.warned = False


class Dispatcher:
    def __init__(self, settings, wake=None, clock=time.monotonic):
        self.clock = clock          # injectable, so delivery logic can be driven step by step in tests
        self.db_path = settings["ARCADE_DB"]
        self.mqtt_url = settings["MQTT_URL"]
        # one broker, or a cluster's nodes tried in turn: each (re)connect attempt after the first
        # goes to the next (a node lost, or refusing us, is left for the next one)
        self.targets = parse_mqtt_urls(self.mqtt_url)
        self._target_i = -1
        # "5" (message expiry on credits) or "3.1.1" (clean_session False: the same persistent session)
        self.mqtt_version = str(settings.get("ARCADE_MQTT_VERSION") or "5")
        self.prefix = settings["ARCADE_TOPIC_PREFIX"]
        self.ack_timeout = float(settings["ARCADE_ACK_TIMEOUT"])
        self.ack_timeout_max = float(settings["ARCADE_ACK_TIMEOUT_MAX"])
        self.stuck_after = float(settings["ARCADE_STUCK_AFTER"])
        self.rescan = float(settings["ARCADE_RESCAN"])
        self.keepalive = int(settings["ARCADE_MQTT_KEEPALIVE"])
        self.busy_timeout = int(settings["ARCADE_DB_BUSY_TIMEOUT"])
        self.refund_after, _, self.clock_skew = expiry.settings(settings)   # signed expiry (relay/expiry.py)
        self.wake_event = wake if wake is not None else threading.Event()
        self.connected = False      # the MQTT connection is up (read by /healthz)
        self.broker = None          # host:port of the broker connected or being tried
        self.ledger_id = None
        self._inbox = collections.deque()
        self._stopping = threading.Event()
        self._lock = threading.RLock()  # the delivery state below: the worker's steps, a webhook's publish_first
        self._thread = None
        self._listener = None       # PostgreSQL: hears credits other relays committed (_listen)
        self._client = None
        self._lock_file = None
        self._session_up = False    # the worker has seen the connection and may publish
        self._flights = {}          # cabinet id -> _Flight
        self._mids = {}             # paho message id -> _Flight
        self._cfg_mids = {}         # paho message id -> (cabinet id, config ver) of a retained config publish
        self._cfg_sent = {}         # cabinet id -> config ver published in this connection (PUBACK pending)
        self._cfg_seen = set()      # cabinets whose retained config the broker sent back since connecting
        self._cfg_check_at = None   # when to republish the configs the broker no longer holds
        self._quiet = {}            # (cabinet id, what) -> when an ignored message was last logged
        self.tz = settings.get("ARCADE_TZ") or "UTC"
        self.wall = time.time       # wall clock for promotion windows (a test's seam)
        self._screens_at = None     # when to look again whether a cabinet screen's lines changed
        self.screen_check = screenlines.SCREEN_CHECK_SECONDS
        # PostgreSQL: several relays share the database, each cabinet dispatched by its lease holder
        # (relay/leases.py); SQLite: one dispatcher per database, under a file lock.
        self.leases = None
        if backends.is_postgres(self.db_path):
            self.leases = leases.Leases(settings.get("ARCADE_RELAY_NAME") or leases.default_name(),
                                        float(settings.get("ARCADE_LEASE_SECONDS") or leases.DEFAULT_SECONDS), clock)
        # holds the database's dispatcher lock: with SQLite the relay-wide duties (reconciliation,
        # alerts, refunds) run in this process; with PostgreSQL the leader lease decides where they
        # run, and it moves (relay/leadership.py)
        self.leader = False

    # -- life cycle ---------------------------------------------------------------------------

    def start(self):
        """Take the database's dispatcher lock and start. False if another process holds it (SQLite;
        with PostgreSQL every relay starts; relay/leadership.py decides which one runs the duties)."""
        lock = backends.take_dispatcher_lock(self.db_path)
        self.leader = lock is not None
        if lock is None and self.leases is None:
            log.info("another relay process runs the dispatcher for %s; this one only serves webhooks",
                     backends.redact(self.db_path))
            return False
        self._lock_file = lock
        try:
            with open_ledger(self.db_path, self.busy_timeout) as ledger:
                self.ledger_id = ledger.ledger_id
            self._client = self._make_client()
            target = self.targets[0]
            if self.mqtt_version == "5":
                # MQTT 5 (for message expiry on credits): clean_start False + a session that never expires
                # is v3.1.1's clean_session False, the persistent session the delivery rules rely on
                session = Properties(PacketTypes.CONNECT)
                session.SessionExpiryInterval = 0xFFFFFFFF
                self._client.connect_async(target["host"], target["port"], keepalive=self.keepalive,
                                           clean_start=False, properties=session)
            else:
                self._client.connect_async(target["host"], target["port"], keepalive=self.keepalive)
            self._client.loop_start()
        except BaseException:
            self._release()
            raise
        self._thread = threading.Thread(target=self._run, name="arcade-dispatcher", daemon=True)
        self._thread.start()
        if self.leases is not None:
            self._listener = threading.Thread(target=self._listen, name="arcade-credits-listener", daemon=True)
            self._listener.start()
        log.info("dispatcher started: client id %s, broker %s", self.client_id, mask_url(self.mqtt_url))
        return True

    def stop(self, timeout=10.0):
        self._stopping.set()
        self.wake_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._listener is not None:
            self._listener.join(timeout)
            self._listener = None
        if self._client is not None:
            self._client.disconnect()   # a clean disconnect keeps the broker session (it never expires)
            self._client.loop_stop()
            self._client = None
        self.connected = False
        self._release()

    def _release(self):
        if self._lock_file is not None:
            self._lock_file.release()
            self._lock_file = None

    def wake(self):
        self.wake_event.set()

    def in_flight(self, cab):
        """Has this dispatcher a credit of `cab` in flight? Then a new one waits for its ack, whose step
        puts the next in flight: a webhook committed before asking needs no wake-up of its own."""
        return cab in self._flights

    def first_publish(self, cab):
        """For a webhook about to record a credit for `cab`: Ledger.record_checkout's publish_first when
        this dispatcher may publish it the moment it is committed (connected, nothing of `cab` in
        flight, its lease held), else None. A hint read without the lock: publish_first decides."""
        if not self._session_up or cab in self._flights or self._stopping.is_set() or (
                self.leases is not None and not self.leases.valid(cab)):
            return None
        return {"expiry": lambda queued_at, clock_set: expiry.exp_for(queued_at, clock_set, self.refund_after)}

    def publish_first(self, row):
        """Put a credit the webhook's committed transaction marked published (record_checkout's
        publish_first["row"]) in flight and publish it, from the webhook's thread. If the worker put it
        in flight meanwhile, nothing to do; if the connection went down, the worker sends it from the
        ledger (it is marked, with its exp) as it would any other."""
        with self._lock:
            cab = row["cabinet_id"]
            if self._session_up and cab not in self._flights and not self._stopping.is_set():
                flight = self._flights[cab] = _Flight(row, self._credit(row, row["epoch"]), self.clock(),
                                                      row["epoch"])
                self._publish(flight)
                return True
        self.wake_event.set()
        return False

    @property
    def client_id(self):
        if self.leases is not None:     # one per relay process: each keeps its own broker session
            return "arcade-relay-%s-%s" % (self.ledger_id[:8], self.leases.name)
        return "arcade-relay-%s" % self.ledger_id[:8]

    def _mine(self, ledger, cab):
        """May this relay dispatch `cab`? Always with SQLite; with PostgreSQL while it holds the lease
        (taken here when free or run out)."""
        return self.leases is None or self.leases.acquire(ledger, cab)

    def _topic(self, cab, kind):
        return "%s/%s/%s" % (self.prefix, cab, kind)

    # -- paho's network thread: record and wake, nothing else ----------------------------------

    def _make_client(self):
        target = self.targets[0]
        if self.mqtt_version == "5":
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        else:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311,
                                 clean_session=False)
        if target["username"] is not None:
            client.username_pw_set(target["username"], target["password"])
        client.on_pre_connect = self._on_pre_connect
        if target["tls"]:
            client.tls_set()
        client.reconnect_delay_set(min_delay=1, max_delay=4)
        client.max_inflight_messages_set(1000)
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _post(self, item):
        self._inbox.append(item)
        self.wake_event.set()

    def _on_pre_connect(self, client, userdata):
        # paho's network thread, before each connection attempt: the first goes to the first broker,
        # every later one to the next (paho offers no setter while it reconnects: its own fields)
        self._target_i = (self._target_i + 1) % len(self.targets)
        target = self.targets[self._target_i]
        if len(self.targets) > 1:
            client._host, client._port = target["host"], target["port"]
            client.username_pw_set(target["username"], target["password"])
        self.broker = "%s:%d" % (target["host"], target["port"])

    def _on_socket_open(self, client, userdata, sock):
        # Credits are tiny and latency matters: don't let Nagle hold one back behind a PUBACK.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass  # not a TCP socket (e.g. a TLS wrapper that refuses): correct, only slower

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("broker %s refused the connection: %s", self.broker, reason_code)
            return
        # config too: the broker sends back the retained configs it holds, to compare with the ledger
        client.subscribe([(self._topic("+", "ack"), 1), (self._topic("+", "status"), 1),
                          (self._topic("+", "config"), 1)])
        self.connected = True
        self._post(("connected", flags.session_present))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected = False
        self._post(("disconnected", str(reason_code)))

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self._post(("puback", mid))

    def _on_message(self, client, userdata, msg):
        self._post(("message", msg.topic, msg.payload, msg.retain))

    # -- PostgreSQL: credits another relay committed ------------------------------------------

    def _listen(self):
        """Wake the worker whenever any relay commits a credit (Ledger.record_checkout notifies
        backends.CREDITS_CHANNEL): the lease holder of its cabinet publishes it at once, not at the next
        ARCADE_RESCAN. The worker decides whose it is; losing this connection costs only that rescan's
        delay until it is back (retried every second)."""
        conn = None
        while not self._stopping.is_set():
            try:
                if conn is None:
                    conn = backends.listen_credits(self.db_path)
                    self.wake_event.set()       # anything committed while not listening
                if backends.wait_credits(conn, 1.0):
                    self.wake_event.set()
            except StorageError as e:
                why = str(e).strip().replace(self.db_path, backends.redact(self.db_path))[:300]
                log.warning("not hearing other relays' credits (%s): retrying in 1 s; meanwhile they wait for "
                            "the rescan (ARCADE_RESCAN)", why)
                if conn is not None:
                    conn.close()
                    conn = None
                self._stopping.wait(1.0)
        if conn is not None:
            conn.close()

    # -- the worker thread --------------------------------------------------------------------

    def _run(self):
        ledger = None
        timeout = 0
        while not self._stopping.is_set():
            self.wake_event.wait(timeout)
            self.wake_event.clear()
            if self._stopping.is_set():
                break
            try:
                if ledger is None:
                    ledger = open_ledger(self.db_path, self.busy_timeout)
                timeout = self.step(ledger)
            except StorageError as e:
                log.error("storage failure, retrying in 1 s: %s", e)
                timeout = 1.0
                if ledger is not None and self.leases is not None:
                    # its connection may be broken or stuck in an aborted transaction: a fresh one
                    try:
                        ledger.close()
                    except Exception:
                        pass
                    ledger = None
            except Exception:
                log.exception("dispatcher error, retrying in 1 s")
                timeout = 1.0
        if ledger is not None:
            if self.leases is not None:
                self.leases.release_all(ledger)
            ledger.close()

    def step(self, ledger):
        """One round of delivery work: handle what paho reported, put idle cabinets' next credits in
        flight, resend what is due. Returns the seconds until the next round is due. Holds the
        dispatcher's lock for each part (each thing paho reported is one), not for the whole round:
        a webhook's publish_first waits for one of them at most."""
        if self.leases is not None:
            with self._lock:
                self.leases.renew(ledger)
                for cab in [c for c in self._flights if not self.leases.valid(c)]:
                    del self._flights[cab]  # lost or run out: its holder (maybe this relay again) publishes it
        self._drain(ledger)
        with self._lock:
            if self._session_up:
                self._drop_revoked(ledger)
                self._fill(ledger)
                self._check_retained_configs(ledger)
                self._refresh_screens(ledger)
                self._publish_configs(ledger)
                self._redeliver_due()
            return self._next_timeout()

    def _next_timeout(self):
        now = self.clock()
        deadline = now + self.rescan
        if self._cfg_check_at is not None:
            deadline = min(deadline, self._cfg_check_at)
        if self._screens_at is not None:
            deadline = min(deadline, self._screens_at)
        if self.leases is not None and self.leases.next_due() is not None:
            deadline = min(deadline, self.leases.next_due())
        for f in self._flights.values():
            if f.next_retry is not None:
                deadline = min(deadline, f.next_retry)
        return max(0.0, deadline - now)

    def _drain(self, ledger):
        while self._inbox:
            with self._lock:
                self._handle(ledger, self._inbox.popleft())

    def _handle(self, ledger, item):
        """One thing paho reported (see _drain)."""
        kind = item[0]
        if kind == "connected":
            self._session_up = True
            self._mids.clear()
            self._cfg_mids.clear()
            self._cfg_sent.clear()      # unacknowledged configs are published again below
            self._cfg_seen.clear()
            self._cfg_check_at = self.clock() + CONFIG_CHECK_AFTER
            log.info("connected to %s (session %s); resuming %d credit(s) in flight", self.broker,
                     "kept" if item[1] else "new", len(self._flights))
            for flight in self._flights.values():
                flight.attempts = 0
                self._publish(flight)
        elif kind == "disconnected":
            if self._session_up:
                log.warning("disconnected from the broker (%s); paho reconnects", item[1])
            self._session_up = False
        elif kind == "puback":
            if item[1] in self._cfg_mids:
                cab, ver = self._cfg_mids.pop(item[1])
                ledger.mark_config_published(cab, ver)
                log.info("config ver %d for %s is on the broker (retained)", ver, cab)
                return
            flight = self._mids.pop(item[1], None)
            if flight is not None and self._flights.get(flight.cab) is flight:
                ledger.mark_sent(flight.session, flight.seq)
        elif kind == "message":
            self._on_cabinet_message(ledger, *item[1:])

    def _fill(self, ledger):
        """Put the lowest-seq unacknowledged credit of every idle cabinet in flight."""
        exclude = set(self._flights)
        if self.leases is not None:     # cabinets another relay holds are its to publish
            exclude.update(self.leases.foreign_now())
        for row in ledger.next_deliveries(exclude=exclude, expiry=lambda row: expiry.expiry_for(
                ledger, row, self.refund_after)):
            if not self._mine(ledger, row["cabinet_id"]):
                continue
            epoch = ledger.cabinet_epoch(row["cabinet_id"])
            since = self.clock() - max(0.0, time.time() - row["queued_at"])
            flight = self._flights[row["cabinet_id"]] = _Flight(row, self._credit(row, epoch), since, epoch)
            self._publish(flight)

    def _credit(self, row, epoch):
        return protocol.build_credit(row["cabinet_id"], self.ledger_id, row["seq"], row["credits"], row["pulses"],
                                     row["session_id"], row["secret"], ts=row["issued_ts"], epoch=epoch,
                                     exp=row.get("exp") or 0)

    def _drop_revoked(self, ledger):
        """A credit in flight past its exp may have been refunded automatically (relay/autorefund.py):
        stop sending it (the cabinet refuses it anyway) and let the cabinet's next credit go."""
        now = time.time()
        for cab, flight in list(self._flights.items()):
            if (flight.row.get("exp") or 0) and now >= flight.row["exp"] and \
                    not ledger.still_pending(flight.session, flight.seq):
                log.info("credit seq %d for %s (session %s) was revoked (refunded): no longer sent", flight.seq, cab,
                         flight.session)
                del self._flights[cab]

    def _new_epoch(self, ledger, cab, epoch, why, changed):
        """The cabinet's journal has `epoch` (recorded): sign the credit in flight for it and send it now."""
        flight = self._flights.get(cab)
        if flight is None or flight.epoch == epoch:
            return
        log.info("cabinet %s has epoch %s (%s): seq %d signed again for it", cab, epoch, why, flight.seq)
        cabinet = ledger.get_cabinet(cab)       # a re-provisioned board: a new journal and a new secret
        if cabinet is not None:
            flight.row = dict(flight.row, secret=cabinet["secret"])
        flight.epoch, flight.payload = epoch, self._credit(flight.row, epoch)
        flight.attempts = 0
        if self._session_up:
            self._publish(flight)
        if changed:
            log.warning("cabinet %s started a new journal (epoch %s): credits signed for its old one no longer "
                        "apply; an applied credit whose ack was lost with the old flash would apply again", cab, epoch)

    def _publish(self, flight):
        if self.leases is not None and not self.leases.valid(flight.cab):
            # fenced: the lease ran out (a pause, the database out of reach); the next step drops it
            log.warning("not publishing seq %d for %s: this relay's lease on it ran out", flight.seq, flight.cab)
            flight.next_retry = None
            return
        kw = {}
        exp = flight.row.get("exp") or 0
        if exp:
            left = int(exp - time.time())
            if left < 1:
                # never published at or after its exp (the cabinet refuses it; its refund is due): no copy
                # of it is anywhere once the broker drops the queued ones
                flight.next_retry = self.clock() + self.ack_timeout_max
                return
        if exp and self.mqtt_version == "5":
            # the broker drops a copy still queued for the cabinet at exp (MQTT 5 message expiry; with
            # 3.1.1 a copy delivered late is refused by the cabinet, which checks the signed exp)
            kw["properties"] = Properties(PacketTypes.PUBLISH)
            kw["properties"].MessageExpiryInterval = left
        info = self._client.publish(self._topic(flight.cab, "credit"), flight.payload, qos=1, **kw)
        self._mids[info.mid] = flight
        flight.attempts += 1
        delay = min(self.ack_timeout * 2 ** (flight.attempts - 1), self.ack_timeout_max)
        flight.next_retry = self.clock() + delay
        log.debug("published credit %s seq %d (attempt %d)", flight.cab, flight.seq, flight.attempts)

    def _refresh_screens(self, ledger):
        """Every SCREEN_CHECK_SECONDS: a new config version for each cabinet whose screen lines (price,
        promotion on now) changed, e.g. a happy hour that opened or closed (relay/screenlines.py)."""
        now = self.clock()
        if self._screens_at is not None and now < self._screens_at:
            return
        self._screens_at = now + self.screen_check
        for cab, (ver, price, promo) in screenlines.refresh(ledger, self.tz, self.wall()).items():
            log.info("config ver %d for %s: its screen now says %r / %r", ver, cab, price, promo or "(no promotion)")

    def _publish_configs(self, ledger):
        """Publish each cabinet's newest issued config (signed, retained, QoS 1) until the broker has it."""
        for row in ledger.pending_configs():
            cab, ver = row["cabinet_id"], row["ver"]
            if self._cfg_sent.get(cab) == ver or not self._mine(ledger, cab):
                continue
            payload = protocol.build_config(cab, ver, row["pulse_ms"], row["gap_ms"], row["coins_per_credit"],
                                            row["secret"], ts=row["ts"], price=row["price"], promo=row["promo"])
            info = self._client.publish(self._topic(cab, "config"), payload, qos=1, retain=True)
            self._cfg_mids[info.mid] = (cab, ver)
            self._cfg_sent[cab] = ver
            log.info("published config ver %d for %s: pulse %s ms, gap %s ms, %d coin(s) per credit", ver, cab,
                     row["pulse_ms"] or "default", row["gap_ms"] or "default", row["coins_per_credit"])

    def _on_retained_config(self, ledger, cab, msg):
        """The broker's retained config for `cab` (sent back on every subscribe, and whenever it changes):
        if the ledger says it was published and the broker's copy is gone or another, publish it again."""
        self._cfg_seen.add(cab)
        cfg = ledger.cabinet_config(cab)
        if cfg is None or not cfg["ver"] or cfg["published_ver"] < cfg["ver"]:
            return                  # nothing issued, or a publish still on its way
        if isinstance(msg, dict) and msg.get("ver") == cfg["ver"] and protocol.verify_config(msg, cfg["secret"]):
            return
        log.warning("the broker's retained config for %s is %s: publishing ver %d again", cab,
                    "gone" if msg is None else "not the one issued", cfg["ver"])
        ledger.mark_config_unpublished(cab)
        self._cfg_sent.pop(cab, None)

    def _check_retained_configs(self, ledger):
        """A while after connecting: configs the broker sent no retained copy of are published again
        (a broker that lost its persistence, or a retained message deleted while the relay was away)."""
        if self._cfg_check_at is None or self.clock() < self._cfg_check_at:
            return
        self._cfg_check_at = None
        for cab in ledger.published_configs():
            if cab not in self._cfg_seen and (self.leases is None or self.leases.valid(cab)):
                self._on_retained_config(ledger, cab, None)

    def _redeliver_due(self):
        now = self.clock()
        for flight in self._flights.values():
            if not flight.warned and now - flight.since > self.stuck_after:
                flight.warned = True
                log.warning("stuck: credit seq %d for cabinet %s (session %s) unacknowledged for %.0f s",
                            flight.seq, flight.cab, flight.session, now - flight.since)
            if flight.next_retry is not None and flight.next_retry <= now:
                log.info("no ack from %s for seq %d: sending it again (attempt %d)", flight.cab, flight.seq,
                         flight.attempts + 1)
                self._publish(flight)

    # -- what cabinets say ---------------------------------------------------------------------

    def _on_cabinet_message(self, ledger, topic, payload, retained):
        head, sep, rest = topic.partition(self.prefix + "/")
        parts = rest.split("/")
        if head or not sep or len(parts) != 2:
            return
        cab, kind = parts
        if len(payload) > protocol.MAX_STATUS_BYTES:
            # no cabinet sends that much (the broker's max_packet_size refuses it too): never parsed or stored
            self._ignored(cab, "size", "ignored a %d-byte %s on %s's topic (at most %d)", len(payload), kind, cab,
                          protocol.MAX_STATUS_BYTES)
            return
        try:
            msg = json.loads(payload) if payload else None
        except ValueError:
            msg = None
        if self.leases is not None and not self.leases.valid(cab) and (
                ledger.get_cabinet(cab) is None or not self._mine(ledger, cab)):
            return                  # another relay holds this cabinet: every relay hears it, its holder acts
        if kind == "config":
            self._on_retained_config(ledger, cab, msg)
            return
        if not isinstance(msg, dict):
            if payload:
                self._ignored(cab, "json", "ignored %s from %s: not a JSON object", kind, cab)
            return
        if kind == "status":
            self._on_status(ledger, cab, msg, retained)
        elif kind == "ack":
            self._on_ack(ledger, cab, msg)

    def _ignored(self, cab, what, text, *args):
        # a stream of bad messages is one log line a minute per cabinet, not one per message
        now = self.clock()
        if now - self._quiet.get((cab, what), -1e9) >= 60.0:
            self._quiet[(cab, what)] = now
            log.warning(text, *args)

    def _on_status(self, ledger, cab, msg, retained):
        cabinet = ledger.get_cabinet(cab)
        if cabinet is None:
            log.info("status from unknown cabinet %s ignored", cab)
            return
        if msg.get("cab") != cab or not protocol.verify_status(msg, cabinet["secret"]):
            self._ignored(cab, "status", "ignored a status on %s's topic: unsigned, not signed with its secret, or "
                          "for another cabinet (firmware older than protocol v2, or a forgery)", cab)
            return
        if not protocol.valid_epoch(msg["epoch"]):
            self._ignored(cab, "status", "ignored a status from %s: epoch %r", cab, msg["epoch"])
            return
        online = msg["online"]
        # recorded with its epoch in one transaction, unless stale; a live online status says whether its
        # clock is set, as it says it now (whether its credits may expire)
        verdict = ledger.set_cabinet_epoch(cab, msg["epoch"], msg["boot"], msg["n"], status=dict(
            online=online, status=protocol.signed_status_fields(msg),
            clock_set=expiry.clock_ok(msg, time.time(), self.clock_skew) if online and not retained else None))
        if verdict == "stale":
            self._ignored(cab, "stale", "ignored a stale status from %s (epoch %s, boot %d, n %d): a replay, or "
                          "the retained copy of one already seen", cab, msg["epoch"], msg["boot"], msg["n"])
            return
        if online:
            # a credit signed for another epoch than the cabinet's current one never applies
            self._new_epoch(ledger, cab, msg["epoch"], "its status", verdict == "new")
        flight = self._flights.get(cab)
        # A live (not retained) online status means the cabinet just connected: resend at once, but
        # at most once per ack timeout, so a stream of "online" statuses is no stream of publishes.
        now = self.clock()
        if online and not retained and flight is not None and self._session_up and now >= flight.online_resend_at:
            log.info("cabinet %s is online: sending seq %d again now", cab, flight.seq)
            flight.attempts = 0
            flight.online_resend_at = now + self.ack_timeout
            self._publish(flight)

    def _on_ack(self, ledger, cab, msg):
        cabinet = ledger.get_cabinet(cab)
        if cabinet is None:
            log.warning("ignored ack on the topic of unknown cabinet %s", cab)
            return
        if msg.get("cab") != cab or not protocol.verify_ack(msg, cabinet["secret"]):
            log.warning("ignored ack for %s: signature does not verify or cabinet differs from the topic", cab)
            return
        flight = self._flights.get(cab)
        # The session too: after a restore from a backup the ledger reuses seqs the cabinet has
        # used, and an old ack (from the cabinet's flash or a broker queue) must not settle a new credit.
        if (msg["ledger"] != self.ledger_id or flight is None or msg["seq"] != flight.seq
                or msg["session"] != flight.session):
            if msg["ledger"] == self.ledger_id and msg["result"] in ("applied", "duplicate") and \
                    ledger.late_ack(msg["session"], msg["seq"], msg["result"]):
                log.error("cabinet %s acked %s for seq %d (session %s) after its automatic refund: the play was "
                          "given before exp and its ack came late; recorded as refunded after play", cab,
                          msg["result"], msg["seq"], msg["session"])
                return
            log.info("ignored ack from %s for seq %s (session %s) of ledger %s: not the credit in flight (%s)", cab,
                     msg["seq"], msg["session"] or '""', msg["ledger"][:8] or '""',
                     "seq %d, session %s" % (flight.seq, flight.session) if flight else "none")
            return
        result, reason = msg["result"], msg["reason"]
        if result == "rejected" and reason == "wrong_epoch":
            # the cabinet verified this very credit and names its journal's epoch: sign it for that one
            verdict = "stale"
            if protocol.valid_epoch(msg["epoch"]) and msg["epoch"] != flight.epoch:
                verdict = ledger.set_cabinet_epoch(cab, msg["epoch"])
            if verdict == "stale":
                log.warning("ignored wrong_epoch ack from %s for seq %d: epoch %r is not new", cab, flight.seq,
                            msg["epoch"])
                return
            self._new_epoch(ledger, cab, msg["epoch"], "its ack", verdict == "new")
            return
        if result == "rejected" and reason in protocol.UNVERIFIED_REASONS:
            # The credit in flight is ours and correctly signed: a cabinet can't honestly find it
            # forged or unreadable. Such an ack can only be an old firmware's signed echo of a
            # forgery that carried this credit's seq and session (a signing oracle): not final.
            log.warning("ignored ack from %s: %s for seq %d, which the relay signed; keeps it in flight", cab,
                        reason, flight.seq)
            return
        if result == "applied" and msg["pulses"] != flight.pulses:
            log.warning("ignored ack from %s: applied seq %d with %d pulses, the credit has %d", cab, flight.seq,
                        msg["pulses"], flight.pulses)
            return
        if result == "rejected" and reason == "expired" and not flight.row.get("exp"):
            # an old copy's answer (it had exp): the copy without exp now in flight is answered on its own
            log.info("ignored expired ack from %s for seq %d: signed again without expiry since", cab, flight.seq)
            return
        if result == "rejected" and reason == "expired" and expiry.expired_ack_means_unset_clock(flight.row.get("exp")):
            # exp is still ahead by our clock: the cabinet's clock is unset (rebooted without NTP). Sign it
            # without exp, recorded first: from now on it is never refunded automatically
            if not ledger.drop_expiry(flight.session, flight.seq):
                return                  # revoked meanwhile: no copy without exp may go out
            log.warning("cabinet %s refused seq %d as expired before its exp: its clock is unset; sent again without "
                        "expiry (no automatic refund for it)", cab, flight.seq)
            flight.row = dict(flight.row, exp=0)
            flight.payload, flight.attempts = self._credit(flight.row, flight.epoch), 0
            if self._session_up:
                self._publish(flight)
            return
        if result == "rejected" and reason == "stale_seq":
            changed = ledger.resequence(cab, max(msg["last"], flight.seq))
            log.warning("cabinet %s has applied up to seq %d of this ledger, beyond seq %d: was the database "
                        "restored from a backup? re-sequenced %d credit(s): %s", cab, msg["last"], flight.seq,
                        len(changed), ", ".join("%d->%d" % (old, new) for _, old, new in changed))
        elif result in protocol.ACK_RESULTS:
            if not ledger.record_ack(flight.session, flight.seq, result, reason, msg["pulses"], msg["last"]) and \
                    result in ("applied", "duplicate") and ledger.late_ack(flight.session, flight.seq, result):
                log.error("cabinet %s acked %s for seq %d (session %s) after its automatic refund: recorded as "
                          "refunded after play", cab, result, flight.seq, flight.session)
            (log.warning if result == "rejected" else log.info)(
                "cabinet %s: seq %d %s%s", cab, flight.seq, result, " (%s)" % reason if reason else "")
        else:
            log.warning("ignored ack from %s with unknown result %r", cab, result)
            return
        del self._flights[cab]


def start_for_app(app):
    """Start the dispatcher for this app's database unless another process runs it. Returns it or None."""
    dispatcher = Dispatcher(app.config, wake=app.extensions["arcade"]["wake"])
    if not dispatcher.start():
        return None
    app.extensions["arcade"]["dispatcher"] = dispatcher
    return dispatcher
