"""Automatic refunds of credits a cabinet couldn't take (docs/operations.md, docs/protocol.md: Expiry).

Runs in the leader relay (relay/leadership.py), every ARCADE_REFUND_EVERY (30 s) when
STRIPE_API_KEY is set and ARCADE_REFUND_AFTER is not 0. A payment is refunded automatically when
one of these is true, checked again under the database lock when it is held (Ledger.claim_auto_refund):

* its credit was never published and was queued ARCADE_REFUND_AFTER ago (nothing can pulse it);
* every copy of its credit ever published carries the signed exp (> 0), exp + ARCADE_REFUND_MARGIN
  has passed by the relay's clock, and no ack settled it: the cabinet starts a credit only while its
  own clock says now < exp, and the broker dropped any copy still queued at exp (MQTT 5 expiry);
* the cabinet refused it as expired (a verified ack naming it).

Then Stripe is asked as for an operator's refund (relay/refunds.py: one idempotency key per
payment). The player's /paid page says "Refunded — the cabinet couldn't take your credit".
"""
import logging
import time

from relay import expiry, refunds
from relay.ledger import open_ledger
from relay.periodic import Job

log = logging.getLogger("arcade.autorefund")
EVERY = 30.0


def run_once(ledger, cfg, now=None, client=None):
    """Refund every payment due now; returns [(session_id, outcome)]: 'refunded' or the reason it was not."""
    refund_after, margin, _ = expiry.settings(cfg)
    if not refund_after:
        return []
    now = time.time() if now is None else now
    done = []
    for row in ledger.auto_refund_due(now, refund_after, margin):
        claimed = ledger.claim_auto_refund(row["session_id"], now, refund_after, margin)
        if claimed is None:
            continue
        ledger.audit("relay", "refund.auto", row["session_id"], claimed[1])
        try:
            made = refunds.refund(ledger, cfg, row["session_id"], "relay", "auto", client=client, claimed=claimed)
        except refunds.RefundError as e:
            log.error("automatic refund of %s (cabinet %s, seq %s): %s", row["session_id"], row["cabinet_id"],
                      row["seq"], e)
            done.append((row["session_id"], str(e)))
            continue
        log.warning("refunded automatically: %s (cabinet %s, seq %s): %s; refund %s", row["session_id"],
                    row["cabinet_id"], row["seq"], claimed[1], made["refund_id"])
        done.append((row["session_id"], "refunded"))
    return done


class AutoRefunder(Job):
    thread_name = "arcade-autorefund"

    def __init__(self, cfg, every=EVERY):
        super().__init__(every)
        self.cfg = cfg

    def run_once(self):
        with open_ledger(self.cfg["ARCADE_DB"], self.cfg.get("ARCADE_DB_BUSY_TIMEOUT", 5000)) as ledger:
            return run_once(ledger, self.cfg)


def start_for_app(app):
    """Start automatic refunds in this (dispatcher) process when on; returns the job or None. Raises ConfigError."""
    refund_after, margin, _ = expiry.settings(app.config)
    if not refund_after or not app.config.get("STRIPE_API_KEY"):
        log.info("automatic refunds are off (%s)", "ARCADE_REFUND_AFTER=0" if not refund_after else "no STRIPE_API_KEY")
        return None
    every = float(app.config.get("ARCADE_REFUND_EVERY") or EVERY)
    log.info("automatic refunds: a credit not applied %d s after payment (its signed exp) is refunded %d s after "
             "exp; checked every %.0f s", refund_after, margin, every)
    return AutoRefunder(app.config, every).start(gate=app.extensions["arcade"].get("gate"))   # relay/leadership.py
