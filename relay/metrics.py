"""GET /metrics: the relay in Prometheus' text format (prometheus_client).

Most figures are read from the ledger at scrape time (a custom collector), so every process on the
database reports the same truth and the webhook path carries no instrumentation of its own; the
webhook's latency is timed around the request by hooks this module adds to the app. Names follow
arcade_<thing>_<unit>; labels are small fixed sets (state, cabinet id) — never a session id.
With ARCADE_METRICS_TOKEN set, a scrape needs `Authorization: Bearer <token>` (constant-time check).
"""
import collections
import hmac
import time

from flask import Blueprint, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from relay.ledger import STATES, open_ledger

bp = Blueprint("metrics", __name__)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
APPLIED_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class LedgerCollector:
    """Reads the ledger on each scrape."""

    def __init__(self, app):
        self.app = app

    def collect(self):
        cfg = self.app.config
        with open_ledger(cfg["ARCADE_DB"], cfg["ARCADE_DB_BUSY_TIMEOUT"]) as led:
            by_state = led.count_by_state()
            cabinets = led.list_cabinets()
            refunds = led.refund_counts()
            disputes = led.dispute_counts()
            count, total, le = led.applied_latency(APPLIED_BUCKETS)
        g_pay = GaugeMetricFamily("arcade_payments", "Payments in the ledger by state", labels=["state"])
        for state in STATES:
            g_pay.add_metric([state], by_state.get(state, 0))
        yield g_pay
        yield GaugeMetricFamily("arcade_credits_in_flight", "Credits queued or sent, not yet acknowledged",
                                value=by_state.get("queued", 0) + by_state.get("sent", 0))
        yield GaugeMetricFamily("arcade_cabinets", "Cabinets registered", value=len(cabinets))
        online = GaugeMetricFamily("arcade_cabinet_online", "1 when the cabinet's retained status says online",
                                   labels=["cabinet"])
        for cab in cabinets:
            online.add_metric([cab["id"]], 1 if cab["online"] else 0)
        yield online
        yield GaugeMetricFamily("arcade_cabinets_online", "Cabinets online",
                                value=sum(1 for c in cabinets if c["online"]))
        c_ref = CounterMetricFamily("arcade_refunds", "Refunds by state (after_play: 1 when the play was given)",
                                    labels=["state", "after_play"])
        for row in refunds:
            c_ref.add_metric([row["state"], str(row["after_play"])], row["n"])
        yield c_ref
        c_dis = CounterMetricFamily("arcade_disputes", "Disputes by status", labels=["status"])
        for row in disputes:
            c_dis.add_metric([row["status"]], row["n"])
        yield c_dis
        buckets = [(repr(b), n) for b, n in zip(APPLIED_BUCKETS, le)] + [("+Inf", count)]
        yield HistogramMetricFamily("arcade_webhook_to_applied_seconds", "From the webhook's record to the "
                                    "cabinet's applied ack", buckets=buckets, sum_value=total)
        lead = self.app.extensions["arcade"].get("leadership")
        yield GaugeMetricFamily("arcade_relay_leader", "1 while this process runs the relay-wide duties "
                                "(reconciliation, alerts, automatic refunds: the leader lease)",
                                value=1 if lead is not None and lead.leader else 0)
        dispatcher = self.app.extensions["arcade"].get("dispatcher")
        if dispatcher is not None:
            yield GaugeMetricFamily("arcade_broker_connected", "1 while this process's dispatcher is connected "
                                    "to the broker", value=1 if dispatcher.connected else 0)


def init_app(app):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(app))
    latency = Histogram("arcade_webhook_duration_seconds", "Time to answer POST /stripe/webhook",
                        buckets=LATENCY_BUCKETS, registry=registry)
    refused = Counter("arcade_webhook_refused", "Webhooks refused (bad or missing signature, bad body)",
                      registry=registry)
    app.extensions["arcade"]["metrics"] = registry
    # when refusals happened (bounded): the alerts count them over a window
    app.extensions["arcade"]["webhook_refused"] = collections.deque(maxlen=1000)

    @app.before_request
    def _start_timer():
        if request.path == "/stripe/webhook":
            g.arcade_t0 = time.perf_counter()

    @app.after_request
    def _observe(resp):
        t0 = g.pop("arcade_t0", None)
        if t0 is not None:
            latency.observe(time.perf_counter() - t0)
            if resp.status_code == 400:
                refused.inc()
                app.extensions["arcade"]["webhook_refused"].append(time.time())
        return resp

    app.register_blueprint(bp)


@bp.get("/metrics")
def metrics():
    token = current_app.config.get("ARCADE_METRICS_TOKEN")
    if token:
        given = request.headers.get("Authorization", "")[:512]
        expected = "Bearer " + token
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return Response("metrics need Authorization: Bearer <ARCADE_METRICS_TOKEN>\n", 401,
                            {"WWW-Authenticate": 'Bearer realm="metrics"', "Content-Type": "text/plain"})
    registry = current_app.extensions["arcade"]["metrics"]
    return Response(generate_latest(registry), 200, {"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})
