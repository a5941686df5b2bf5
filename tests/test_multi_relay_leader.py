"""Leadership moves between real relays (relay/leadership.py): three `arcade relay` processes on one
PostgreSQL database; the relay-wide duties (here: alerts, the one duty needing no Stripe) run in the
holder of the leader lease. SIGKILL the leader: another relay says it leads (/healthz) and sends the
next alert. SIGSTOP the next leader past its lease and resume it: it sends nothing with its stale
lease, although an alert is there to send (the new leader's alert channel is made to fail, so the
incident stays unsent until the test lets it through; an unfenced stale leader would deliver it).
Cut the leader off from PostgreSQL: the other relay leads and alerts.

Each relay posts its alerts to its own path on the test's receiver (ARCADE_ALERT_WEBHOOK=.../{relay}),
so the receiver, not the relays' own word, says who ran the duty. The takeover times (kill or cut ->
another relay's /healthz says leader) are printed, never asserted: docs/scale.md reports them.
"""
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from relay.ledger import open_ledger
from tools.lab import stack
from tools.lab.broker import Mosquitto
from tools.lab.relays import Relays

WHSEC = "whsec_leader_" + secrets.token_hex(8)
LEASE = 3


class Receiver:
    """The alert webhook: records (relay, text) of every POST; answers 500 to the relays in `refuse`."""

    def __init__(self):
        self.got = []
        self.refuse = set()
        self.cond = threading.Condition()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                relay = self.path.strip("/")
                refused = relay in outer.refuse
                with outer.cond:
                    outer.got.append((relay, body["text"], refused))
                    outer.cond.notify_all()
                self.send_response(500 if refused else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]

    def wait(self, predicate, timeout, what):
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(list(self.got)), timeout):
                raise TimeoutError("no %s within %.0f s; alerts received: %s" % (what, timeout, self.got))

    def sent(self, needle):
        """The relays whose alert containing `needle` was taken (2xx)."""
        return [relay for relay, text, refused in list(self.got) if needle in text and not refused]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def world(tmp_path, pg_url):
    with open_ledger(pg_url) as led:
        logins = {name: led.relay_login(name) for name in ("r1", "r2", "r3")}
        broker_logins = led.broker_logins()
    broker = Mosquitto(tmp_path / "mosquitto", logins=broker_logins).start()
    receiver = Receiver()
    env = {"ARCADE_LEASE_SECONDS": str(LEASE), "ARCADE_ALERT_EVERY": "1", "ARCADE_NAME": "leadertest",
           "ARCADE_ALERT_WEBHOOK": receiver.url + "/{relay}"}
    relays = None
    try:
        relays = Relays(tmp_path, pg_url, lambda name: broker.url_for(*logins[name]), WHSEC, 3, env).start()
        yield relays, receiver, pg_url
    finally:
        if relays is not None:
            relays.stop()
        receiver.close()
        broker.stop()


def _dispute(db, dispute_id, status="needs_response"):
    with open_ledger(db) as led:
        led.record_dispute(dispute_id, status, session_id="cs_" + dispute_id, reason="fraudulent")


def _one_leader(relays, timeout, what):
    return stack.wait_until(lambda: (lambda ls: ls[0] if len(ls) == 1 else None)(relays.leaders()), timeout,
                            interval=0.05, what=what)


def test_leadership_moves_on_a_kill_and_a_cut_and_a_paused_leader_runs_no_duty_with_its_stale_lease(world, capsys):
    relays, receiver, db = world
    first = _one_leader(relays, 15, what="one leader among three relays")
    stack.wait_until(lambda: [line for line in relays.procs[first].lines if "leader: this relay" in
                              line.get("text", "")], 10, what="the start line saying this relay leads")
    _dispute(db, "dp_1")
    receiver.wait(lambda got: receiver.sent("dp_1"), 15, "alert for dp_1")

    # 1. SIGKILL the leader: another relay takes the lease and runs the duty (the next alert is its)
    relays.kill(first)
    killed_at = time.monotonic()
    second = _one_leader(relays, 10 * LEASE, what="a new leader after the kill")
    takeover = time.monotonic() - killed_at
    assert second != first
    _dispute(db, "dp_2")
    receiver.wait(lambda got: receiver.sent("dp_2"), 15, "alert for dp_2")
    assert receiver.sent("dp_1") == [first] and receiver.sent("dp_2") == [second]   # once each, by the leader

    # 2. SIGSTOP the new leader past its lease; the third relay takes over, but its alerts fail for now
    third = [name for name in relays.alive() if name not in (first, second)][0]
    receiver.refuse.add(third)
    relays.pause(second)
    try:
        assert _one_leader(relays, 10 * LEASE, what="a leader while %s is paused" % second) == third
        _dispute(db, "dp_3")
        receiver.wait(lambda got: [r for r, text, refused in got if "dp_3" in text and refused], 15,
                      "the third relay trying to alert dp_3")
    finally:
        relays.resume(second)
    resumed_at = len(receiver.got)
    log = relays.procs[second].log_path
    stack.wait_until(lambda: "lease on role leader lost" in log.read_text(), 10 * LEASE,
                     what="the resumed relay noticing it lost the leader lease")
    # several more alert periods with dp_3 unsent: the resumed relay must not be the one to send it
    receiver.wait(lambda got: len([r for r, text, refused in got[resumed_at:] if "dp_3" in text]) >= 3
                  or [r for r, text, refused in got[resumed_at:] if r == second], 15,
                  "three more tries at dp_3 after the resume")
    assert [r for r, text, refused in receiver.got[resumed_at:] if r == second] == []
    assert second not in relays.leaders()
    receiver.refuse.clear()
    receiver.wait(lambda got: receiver.sent("dp_3"), 15, "alert for dp_3 once its leader's channel works")
    assert receiver.sent("dp_3") == [third]
    assert [r for r, text, refused in receiver.got if r == second and "dp_1" in text] == []   # no repeats

    # 3. Cut the leader off from PostgreSQL: the other relay leads and alerts
    relays.partition(third)
    cut_at = time.monotonic()
    try:
        assert _one_leader(relays, 10 * LEASE, what="a leader while %s is cut off" % third) == second
        cut_takeover = time.monotonic() - cut_at
        _dispute(db, "dp_4")
        receiver.wait(lambda got: receiver.sent("dp_4"), 15, "alert for dp_4")
        assert receiver.sent("dp_4") == [second]
    finally:
        relays.heal(third)
    with capsys.disabled():
        print("\nleadership: takeover (-> another relay's /healthz says leader) after SIGKILL %.1f s, after a cut "
              "from PostgreSQL %.1f s (lease %d s)" % (takeover, cut_takeover, LEASE))
