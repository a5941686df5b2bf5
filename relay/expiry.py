"""The signed expiry of a credit (docs/protocol.md, Expiry), as the dispatcher needs it.

A credit carries `exp` only when the cabinet's last verified status says its clock is set
(`clock` > 0) and close to the relay's: exp = queued_at + ARCADE_REFUND_AFTER. The cabinet starts it
only while its clock says now < exp; the relay refunds it automatically (relay/autorefund.py) only
at exp + ARCADE_REFUND_MARGIN without an ack. A cabinet whose clock is unset gets credits without
exp, which are never refunded automatically. Pure functions: no Stripe, nothing of the console.
"""
import json
import re
import time

from relay.config import ConfigError

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*\Z")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}
DEFAULTS = {"ARCADE_REFUND_AFTER": "15m", "ARCADE_REFUND_MARGIN": "5m", "ARCADE_CLOCK_SKEW": "30s"}
CLOCK_SET = 1704067200          # 2024-01-01: a cabinet clock before it is unset (the firmware's rule)


def _seconds(cfg, key):
    value = cfg.get(key)
    value = DEFAULTS[key] if value is None or str(value).strip() == "" else value
    m = _DURATION.match(str(value))
    if not m:
        raise ConfigError("%s=%r is not a duration: write e.g. 15m, 90s or 1h" % (key, value))
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def settings(cfg):
    """(refund_after, margin, skew) in seconds; refund_after 0 = automatic refunds off. Raises ConfigError."""
    after, margin, skew = (_seconds(cfg, k) for k in ("ARCADE_REFUND_AFTER", "ARCADE_REFUND_MARGIN",
                                                       "ARCADE_CLOCK_SKEW"))
    if after and margin < skew:
        raise ConfigError("ARCADE_REFUND_MARGIN (%d s) must be at least ARCADE_CLOCK_SKEW (%d s): the refund waits "
                          "past exp for the cabinet's clock to be behind ours by that much" % (margin, skew))
    return after, margin, skew


def clock_ok(status, seen_at, skew):
    """Does this cabinet's last verified status say its clock is set, and within `skew` s of ours?"""
    if isinstance(status, str):
        try:
            status = json.loads(status)
        except ValueError:
            return False
    clock = status.get("clock") if isinstance(status, dict) else None
    if not isinstance(clock, int) or isinstance(clock, bool) or clock < CLOCK_SET or not seen_at:
        return False
    return abs(clock - float(seen_at)) <= skew


def exp_for(queued_at, clock_set, refund_after):
    """The exp to sign into a credit queued at `queued_at` at its first publish: 0 (none) when automatic
    refunds are off or the cabinet's last live status did not say its clock is set (`clock_set`)."""
    if not refund_after or not clock_set:
        return 0
    return int(queued_at) + refund_after


def expiry_for(ledger, row, refund_after):
    """exp_for() for a row of Ledger.next_deliveries, its cabinet's clock read from the ledger
    (Ledger.record_status)."""
    return exp_for(row["queued_at"], refund_after and ledger.cabinet_clock_set(row["cabinet_id"]), refund_after)


def expired_ack_means_unset_clock(exp, now=None):
    """A cabinet answered `expired` for a credit whose exp is still ahead by our clock: its clock is
    unset (or wrong). Sign it again without exp (never refunded automatically) rather than refund."""
    return bool(exp) and (time.time() if now is None else now) < exp
