# Applying credits exactly once (docs/protocol.md, "Exactly-once rules"); no MQTT here.
# verify -> dedupe -> journal cur (done=k) before pulse k+1 -> pulse -> mark applied in one
# atomic write -> hand back the ack for the main loop to publish.
import protocol
from journal import RECENT


class Cabinet:
    def __init__(self, cab, secret, journal, coin, tick=None):
        self.cab = cab
        self.key = secret.encode() if isinstance(secret, str) else secret
        self.journal = journal
        self.coin = coin
        self.tick = tick          # called before every pulse (feed the WDT, keep the link alive)
        self.state = journal.load()

    def _ack(self, ledger, seq, result, reason="", pulses=0):
        return protocol.ack(self.key, self.cab, ledger, seq, result, reason, pulses,
                            self.state["last"])

    def handle(self, payload):
        """One credit payload -> (result, ack payload). Pulses before it returns."""
        reason, m = protocol.check_credit(payload, self.cab, self.key)
        if reason:
            if m is None:
                return "rejected", self._ack("", 0, "rejected", reason)
            return "rejected", self._ack(m["ledger"], m["seq"], "rejected", reason)
        s = self.state
        if m["session"] in s["recent"]:
            return "duplicate", self._ack(m["ledger"], m["seq"], "duplicate")
        if m["ledger"] == s["ledger"] and m["seq"] <= s["last"]:
            return "rejected", self._ack(m["ledger"], m["seq"], "rejected", "stale_seq")
        s["cur"] = {"ledger": m["ledger"], "seq": m["seq"], "credits": m["credits"],
                    "pulses": m["pulses"], "session": m["session"], "done": 0}
        return "applied", self._drive()

    def recover(self):
        """At boot: finish a credit cut by a power loss. Returns pulses still driven, or None."""
        cur = self.state["cur"]
        if cur is None:
            return None
        # the pulse that may have been on the line at the cut counts as done: never twice
        if cur["done"] < cur["pulses"]:
            cur["done"] += 1
        left = cur["pulses"] - cur["done"]
        self._drive()
        return left

    def _drive(self):
        s = self.state
        cur = s["cur"]
        while cur["done"] < cur["pulses"]:
            self.journal.save(s)          # done = k is in flash before pulse k+1 starts
            if self.tick:
                self.tick()
            self.coin.pulse()
            cur["done"] += 1
        # mark applied: one atomic write
        if cur["ledger"] != s["ledger"]:
            s["ledger"] = cur["ledger"]   # adopt a new ledger (fresh cabinet, new relay database)
        s["last"] = cur["seq"]
        recent = s["recent"]
        recent.append(cur["session"])
        if len(recent) > RECENT:
            del recent[:len(recent) - RECENT]
        s["total"] += cur["pulses"]
        s["ack"] = [cur["ledger"], cur["seq"], cur["pulses"]]
        s["cur"] = None
        self.journal.save(s)
        return self.pending_ack()

    def pending_ack(self):
        """The last applied credit's ack until the broker has taken it, else None."""
        a = self.state["ack"]
        if a is None:
            return None
        return self._ack(a[0], a[1], "applied", "", a[2])

    def ack_sent(self, payload):
        """The broker PUBACKed `payload`: forget the stored ack if that was it."""
        if self.state["ack"] is not None and payload == self.pending_ack():
            self.state["ack"] = None
            self.journal.save(self.state)
