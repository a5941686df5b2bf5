# Applying credits exactly once (docs/protocol.md, "Exactly-once rules"); no MQTT here.
# verify -> dedupe -> journal cur (done=k) before pulse k+1 -> pulse -> mark applied in one
# atomic write -> hand back the ack for the main loop to publish.
import protocol
from journal import RECENT


class Cabinet:
    def __init__(self, cab, secret, journal, coin, tick=None, board=None, inhibit=None):
        self.cab = cab
        self.key = secret.encode() if isinstance(secret, str) else secret
        self.journal = journal
        self.coin = coin
        self.tick = tick          # called before every pulse (feed the WDT, keep the link alive)
        self.inhibit = inhibit    # None or a callable: True while the game refuses coins
        self.state = journal.load()
        if not self.state.get("epoch"):
            # no usable journal (fresh, corrupt, erased, a new board) or one from before epochs: a
            # new random epoch, stored before anything is applied. Credits signed for any earlier
            # journal carry another epoch and are refused: nothing captured before replays now.
            self.state["epoch"] = protocol.new_epoch()
            self.state["boots"] = 0
        # one write per boot: statuses are numbered (boot, n), so an old one can't pass for new
        self.state["boots"] = self.state.get("boots", 0) + 1
        journal.save(self.state)
        # pulse timing: the board's defaults unless a signed config overrides them (cfg.json)
        self.board = board or {"name": "?", "width_ms": coin.width_ms, "gap_ms": coin.gap_ms,
                               "width_ms_range": [1, 10000], "gap_ms_range": [1, 10000]}
        self.cfg = journal.load_cfg()
        self.cfg_error = ""
        self.test_error = ""
        self._timing()

    def _timing(self):
        c = self.cfg
        b = self.board
        self.coin.width_ms = c["width_ms"] or b["width_ms"]
        self.coin.gap_ms = c["gap_ms"] or b["gap_ms"]

    def inhibited(self):
        return self.inhibit is not None and bool(self.inhibit())

    def held(self):
        """seq of the credit held by the inhibit line, or 0."""
        cur = self.state["cur"]
        return cur["seq"] if cur is not None and cur.get("held") else 0

    def handle_config(self, payload):
        """A config message: applied (stored, then used), ignored (not newer) or refused."""
        reason, m = protocol.check_config(payload, self.cab, self.key)
        ver = m["ver"] if m is not None and isinstance(m.get("ver"), int) else 0
        detail = ""
        if not reason:
            if ver <= self.cfg["ver"]:
                return "ignored"
            for k in ("width_ms", "gap_ms"):
                lo, hi = self.board[k + "_range"]
                if m[k] and not lo <= m[k] <= hi:
                    reason = "out_of_range"
                    detail = "%s %d not in %d..%d (%s)" % (k, m[k], lo, hi, self.board["name"])
                    break
        if reason:
            self.cfg_error = "%d %s" % (ver, reason) + (": " + detail if detail else "")
            return "rejected"
        c = self.cfg
        c["ver"], c["width_ms"], c["gap_ms"], c["cpc"] = ver, m["width_ms"], m["gap_ms"], \
            m["coins_per_credit"]
        self.journal.save_cfg(c)          # in flash first, then in use
        self._timing()
        self.cfg_error = ""
        return "applied"

    def handle_test(self, payload):
        """A signed test pulse: driven once (its n is stored before the first pulse)."""
        reason, m = protocol.check_test(payload, self.cab, self.key)
        n = m["n"] if m is not None and isinstance(m.get("n"), int) else 0
        if not reason:
            if n <= self.cfg["test"]:
                reason = "stale"
            elif self.inhibited():
                reason = "inhibited"
            elif self.state["cur"] is not None:
                reason = "busy"
        if reason:
            self.test_error = "%d %s" % (n, reason)
            return "rejected"
        self.cfg["test"] = n
        self.journal.save_cfg(self.cfg)
        self.test_error = ""
        for _ in range(m["pulses"]):
            if self.tick:
                self.tick()
            self.coin.pulse()
        return "pulsed"

    def _ack(self, ledger, seq, session, result, reason="", pulses=0):
        return protocol.ack(self.key, self.cab, ledger, seq, session, result, reason, pulses,
                            self.state["last"], self.state["epoch"])

    def handle(self, payload):
        """One credit payload -> (result, ack payload). Pulses before it returns."""
        reason, m = protocol.check_credit(payload, self.cab, self.key)
        if reason:
            if m is None or reason == "bad_signature":
                # sign nothing we have not verified: echoing an unverified ledger/seq/session
                # would hand a forger a signed "rejected" ack for a credit still to come
                return "rejected", self._ack("", 0, "", "rejected", reason)
            return "rejected", self._ack(m["ledger"], m["seq"], m["session"], "rejected", reason)
        s = self.state
        if m["epoch"] != s["epoch"]:
            # signed for another journal's epoch (or by a relay that doesn't know ours yet): the
            # ack names it (verified) and carries our epoch, so the relay signs it again for it
            return "rejected", self._ack(m["ledger"], m["seq"], m["session"], "rejected",
                                         "wrong_epoch")
        if m["session"] in s["recent"]:
            return "duplicate", self._ack(m["ledger"], m["seq"], m["session"], "duplicate")
        if s["cur"] is not None:
            # a credit is held by the inhibit line: no answer to it or to any other credit now;
            # the relay redelivers, and by then the held one is applied (or still held)
            return "held", None
        if m["ledger"] == s["ledger"] and m["seq"] <= s["last"]:
            return "rejected", self._ack(m["ledger"], m["seq"], m["session"], "rejected", "stale_seq")
        s["cur"] = {"ledger": m["ledger"], "seq": m["seq"], "credits": m["credits"],
                    "pulses": m["pulses"], "session": m["session"], "done": 0}
        a = self._drive()
        return ("applied", a) if a is not None else ("held", None)

    def recover(self):
        """At boot: finish a credit cut by a power loss. Returns pulses still driven, or None."""
        cur = self.state["cur"]
        if cur is None:
            return None
        # the pulse that may have been on the line at the cut counts as done: never twice
        # (a held credit had no pulse on the line)
        if cur["done"] < cur["pulses"] and not cur.get("held"):
            cur["done"] += 1
        left = cur["pulses"] - cur["done"]
        self._drive()
        return left

    def resume(self):
        """From the main loop: drive a held credit once the inhibit line clears. Ack or None."""
        if not self.held() or self.inhibited():
            return None
        return self._drive()

    def _drive(self):
        s = self.state
        cur = s["cur"]
        while cur["done"] < cur["pulses"]:
            # the gap first: a cut while waiting must not find pulse k+1 journaled as in flight,
            # and the inhibit line is read right before the edge, not a gap earlier
            self.coin.ready()
            if self.inhibited():
                # the game can't take coins: keep the rest in flash, no pulse on the line
                if not cur.get("held"):
                    cur["held"] = 1
                    self.journal.save(s)
                return None
            if cur.get("held"):
                del cur["held"]
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
        s["ack"] = [cur["ledger"], cur["seq"], cur["pulses"], cur["session"]]
        s["cur"] = None
        self.journal.save(s)
        return self.pending_ack()

    def pending_ack(self):
        """The last applied credit's ack until the broker has taken it, else None."""
        a = self.state["ack"]
        if a is None:
            return None
        # flash written before acks carried the session holds 3 items: the relay ignores that
        # ack and sends the credit again, which is then acked as a duplicate with its session
        return self._ack(a[0], a[1], a[3] if len(a) > 3 else "", "applied", "", a[2])

    def ack_sent(self, payload):
        """The broker PUBACKed `payload`: forget the stored ack if that was it."""
        if self.state["ack"] is not None and payload == self.pending_ack():
            self.state["ack"] = None
            self.journal.save(self.state)
