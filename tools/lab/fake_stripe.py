"""A small fake of Stripe's HTTP API on loopback, for tests, the demo and the browser test.

Stripe's API is unreachable from here, so the relay's real stripe-python client is pointed at this
server (`FakeStripe.client()`, or `stripe.StripeClient(key, base_addresses={"api": fake.url})`).
It answers the few endpoints the project uses the way Stripe does, and records every request:

    POST /v1/checkout/sessions              create (form-encoded, Idempotency-Key honoured)
    GET  /v1/checkout/sessions/<id>         retrieve
    GET  /v1/checkout/sessions              list: limit, starting_after, ending_before,
                                            created[gte|gt|lte|lt], status, payment_link; has_more
    POST /v1/checkout/sessions/<id>/expire  expire an open session (sends checkout.session.expired)
    GET  /v1/webhook_endpoints              list the endpoints added with add_webhook_endpoint()

    POST /v1/refunds                        refund a payment_intent or charge (Idempotency-Key honoured;
                                            a second full refund answers charge_already_refunded);
                                            sends charge.refunded
    GET  /v1/refunds/<id>, /v1/charges/<id>, /v1/disputes/<id>   retrieve

Test helpers play Stripe's Dashboard: `dashboard_refund(session_id)`, `open_dispute(session_id)`,
`close_dispute(dispute_id, status)` (each sends its event), and `fail_next_refund(...)` makes the
next refund request fail as Stripe can (refused, 500, or made with its answer lost).

and plays Stripe's hosted pages:

    GET  /pay/<id>          the hosted checkout page: what is bought, a card form, "Pay", a cancel link
                            and a "Let it expire" button
    POST /pay/<id>          pays with the card in the form, as Stripe's test mode does (TEST_CARDS):
                            4242 4242 4242 4242 succeeds: the session becomes complete/paid, a signed
                            checkout.session.completed is POSTed to `webhook_url`, then 303 to success_url
                            ({CHECKOUT_SESSION_ID} filled); 4000 0000 0000 0002 (declined) and
                            4000 0000 0000 9995 (insufficient funds) answer the page again with Stripe's
                            message, the session stays open, no webhook: the player can try again.
                            A form with no card field at all (scripts, older tests) pays with 4242.
    POST /pay/<id>/expire   "let it expire": as if its 24 hours ran out (checkout.session.expired is sent)
    GET  /l/<plink_id>      a Payment Link: makes a session from the link (its metadata copied, the
                            `client_reference_id` query parameter kept) and 303 to its hosted page

Webhooks are signed with tools/lab/stripe_events.py, the same code `arcade trigger` uses.
"""
import hashlib
import html
import json
import re
import secrets
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tools.lab import stripe_events

MAX_BODY = 64 * 1024
_SESSION_PATH = re.compile(r"^/v1/checkout/sessions/(cs_[A-Za-z0-9_]{1,200})$")
_EXPIRE_PATH = re.compile(r"^/v1/checkout/sessions/(cs_[A-Za-z0-9_]{1,200})/expire$")
_PAY_PATH = re.compile(r"^/pay/(cs_[A-Za-z0-9_]{1,200})$")
_PAY_EXPIRE_PATH = re.compile(r"^/pay/(cs_[A-Za-z0-9_]{1,200})/expire$")
_LINK_PATH = re.compile(r"^/l/(plink_[A-Za-z0-9_]{1,200})$")


class Recorded:
    """One request as the fake saw it."""

    def __init__(self, method, path, query, form, headers):
        self.method = method
        self.path = path
        self.query = query            # flat dict of the query string, e.g. {"created[gte]": "17..."}
        self.form = form              # flat dict of the form body, e.g. {"metadata[cabinet_id]": "cab1"}
        self.headers = headers
        self.idempotency_key = headers.get("Idempotency-Key")
        auth = headers.get("Authorization", "")
        self.api_key = auth[7:] if auth.startswith("Bearer ") else None

    def __repr__(self):
        return "<Recorded %s %s>" % (self.method, self.path)


class StripeError(Exception):
    def __init__(self, status, type_, message, code=None, param=None):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": type_, "message": message}}
        if code:
            self.body["error"]["code"] = code
        if param:
            self.body["error"]["param"] = param


def parse_pairs(pairs):
    """Stripe's form encoding back into objects: `a[b][0][c]=v` -> {"a": {"b": [{"c": "v"}]}}."""
    root = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        if not parts:
            continue
        node = root
        for part, nxt in zip(parts, parts[1:]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise StripeError(400, "invalid_request_error", "Invalid parameter nesting: %s" % key)
        node[parts[-1]] = value
    return _lists(root)


def _lists(node):
    if not isinstance(node, dict):
        return node
    if node and all(k.isdigit() for k in node):
        return [_lists(node[k]) for k in sorted(node, key=int)]
    return {k: _lists(v) for k, v in node.items()}


def _int(value, param):
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StripeError(400, "invalid_request_error", "Invalid integer: %s" % value, "parameter_invalid_integer", param)


class FakeStripe:
    """The fake server. `start()`/`stop()` (or `with`), `url`, `requests`, `sessions`, `webhooks`."""

    def __init__(self, webhook_url=None, webhook_secret=None, api_key=None, host="127.0.0.1", port=0,
                 advertise=None):
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.api_key = api_key        # when set, any other key answers 401 like Stripe
        self.host = host
        self.advertise = advertise    # the host name put in URLs, when `host` is 0.0.0.0 (a phone on the LAN)
        self.port = port
        self.requests = []            # every Recorded request, in order
        self.sessions = {}            # id -> session dict (Stripe's JSON shape)
        self.payment_links = {}       # plink id -> {"amount", "currency", "metadata", "name"}
        self.events = []              # every event the fake made (sent or not: no webhook_url)
        self.webhook_endpoints = []   # GET /v1/webhook_endpoints answers these (add_webhook_endpoint)
        self.clock_offset = 0.0       # seconds added to the Date header (a server whose clock differs)
        self.webhooks = []            # (event, status code or error string) for every webhook sent
        self.attempts = []            # card payments tried on the hosted page: {"session", "last4", "outcome", "t"}
        self._order = []              # session ids in creation order
        self.charges = {}             # ch id -> charge (issue 13: refunds and disputes, _money_api)
        self.refunds = {}             # re id -> refund
        self.disputes = {}            # dp id -> dispute
        self.refund_faults = []       # what the next POST /v1/refunds does instead (see fail_next_refund)
        self._idem = {}               # idempotency key -> (fingerprint, status, body)
        self._lock = threading.RLock()
        self._conns = set()           # open client sockets (a browser may preconnect and never ask)
        self._server = None
        self._thread = None

    # -- life cycle ------------------------------------------------------------------------

    def start(self):
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = False       # server_close() joins the request threads
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-stripe",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is None:
            return
        self._server.shutdown()
        with self._lock:
            for conn in list(self._conns):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._server.server_close()
        self._thread.join(10)
        self._server = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        return "http://%s:%d" % (self.advertise or self.host, self.port)

    def client(self, api_key=None, **kwargs):
        """A real stripe-python client whose API base is this server."""
        import stripe
        kwargs.setdefault("max_network_retries", 0)
        return stripe.StripeClient(api_key or self.api_key or "sk_test_fake", base_addresses={"api": self.url},
                                   **kwargs)

    # -- state helpers for tests --------------------------------------------------------------

    def api_requests(self, method=None, path_prefix="/v1/"):
        with self._lock:
            return [r for r in self.requests if r.path.startswith(path_prefix) and (method is None or r.method == method)]

    def add_session(self, created=None, **fields):
        """Put a session straight into the fake (as if made elsewhere, e.g. in the dashboard)."""
        params = {"mode": "payment", "line_items": [{"quantity": "1", "price_data": {
            "currency": fields.pop("currency", "usd"), "unit_amount": str(fields.pop("amount", 100)),
            "product_data": {"name": "Test"}}}]}
        params.update(fields)
        with self._lock:
            return self._create(params, created=created)

    def add_webhook_endpoint(self, url, events=None, livemode=False, status="enabled"):
        """An endpoint as the dashboard would list it (the signing secret is never listed)."""
        ep = {"id": "we_" + secrets.token_hex(12), "object": "webhook_endpoint", "url": url,
              "enabled_events": list(events or ["checkout.session.completed"]), "livemode": livemode,
              "status": status, "api_version": None, "created": int(time.time())}
        with self._lock:
            self.webhook_endpoints.append(ep)
        return ep

    def add_payment_link(self, amount, currency="usd", metadata=None, name="Arcade play", link_id=None):
        link_id = link_id or stripe_events.new_id("plink", 24)
        self.payment_links[link_id] = {"amount": amount, "currency": currency, "metadata": dict(metadata or {}),
                                       "name": name}
        return link_id

    def payment_link_url(self, link_id):
        return "%s/l/%s" % (self.url, link_id)

    def pay(self, session_id):
        """Pay a session as the hosted page's button does; returns the success URL (or None)."""
        with self._lock:
            s = self.sessions.get(session_id)
            if s is None:
                raise KeyError(session_id)
            newly = s["status"] == "open"
            if newly:
                s.update(status="complete", payment_status="paid",
                         payment_intent=stripe_events.new_id("pi", 24))
            obj = json.loads(json.dumps(s))
        if newly:
            self.send_event(obj, "checkout.session.completed")
        return self._success_url(obj)

    def update_session(self, session_id, **fields):
        """Change a stored session's fields as Stripe would on its side (e.g. status="complete",
        payment_status="unpaid" for an async payment still processing), sending no event."""
        with self._lock:
            self.sessions[session_id].update(fields)
            return self._public(self.sessions[session_id])

    def expire(self, session_id):
        with self._lock:
            s = self.sessions.get(session_id)
            if s is None:
                raise StripeError(404, "invalid_request_error", "No such checkout.session: '%s'" % session_id,
                                  "resource_missing", "session")
            if s["status"] != "open":
                raise StripeError(400, "invalid_request_error",
                                  "Only Checkout Sessions with a status in [\"open\"] can be expired.")
            s.update(status="expired", url=None)
            obj = json.loads(json.dumps(s))
        self.send_event(obj, "checkout.session.expired")
        return obj

    def send_event(self, obj, type_):
        """Sign and POST an event to webhook_url (if set); returns the event."""
        evt = stripe_events.event(obj, type_=type_)
        with self._lock:
            self.events.append(evt)
        if not self.webhook_url:
            return evt
        if not self.webhook_secret:
            raise RuntimeError("FakeStripe has a webhook_url but no webhook_secret to sign with")
        body = stripe_events.encode(evt)
        req = urllib.request.Request(self.webhook_url, data=body, method="POST", headers={
            "Content-Type": "application/json; charset=utf-8", "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": stripe_events.signature_header(body, self.webhook_secret)})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                result = resp.status
        except urllib.error.HTTPError as e:
            result = e.code
            e.close()
        except OSError as e:
            result = "error: %s" % e
        with self._lock:
            self.webhooks.append((evt, result))
        return evt

    # -- the API ------------------------------------------------------------------------------

    def _success_url(self, s):
        url = s.get("success_url")
        return url.replace("{CHECKOUT_SESSION_ID}", s["id"]) if url else None

    def _create(self, params, created=None, payment_link=None):
        mode = params.get("mode")
        if mode is None:
            raise StripeError(400, "invalid_request_error", "Missing required param: mode.", "parameter_missing", "mode")
        if mode != "payment":
            raise StripeError(400, "invalid_request_error", "This fake only does mode=payment.", "parameter_invalid", "mode")
        items = params.get("line_items")
        if not isinstance(items, list) or not items:
            raise StripeError(400, "invalid_request_error", "Missing required param: line_items.",
                              "parameter_missing", "line_items")
        total, currency, lines = 0, None, []
        for i, item in enumerate(items):
            pd = item.get("price_data") if isinstance(item, dict) else None
            if not isinstance(pd, dict) or "unit_amount" not in pd or "currency" not in pd:
                raise StripeError(400, "invalid_request_error", "line_items[%d] needs price_data with unit_amount and "
                                  "currency (the fake knows no Price objects)." % i, "parameter_missing",
                                  "line_items[%d][price_data]" % i)
            qty = _int(item.get("quantity", "1"), "line_items[%d][quantity]" % i)
            unit = _int(pd["unit_amount"], "line_items[%d][price_data][unit_amount]" % i)
            if qty < 1 or unit < 0:
                raise StripeError(400, "invalid_request_error", "Invalid quantity or amount in line_items[%d]." % i)
            if currency not in (None, pd["currency"].lower()):
                raise StripeError(400, "invalid_request_error", "All line items must share one currency.")
            currency = pd["currency"].lower()
            total += qty * unit
            name = (pd.get("product_data") or {}).get("name", "")
            lines.append({"description": name, "quantity": qty, "unit_amount": unit, "amount_total": qty * unit})
        metadata = params.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise StripeError(400, "invalid_request_error", "Invalid object", "parameter_invalid", "metadata")
        now = int(time.time())
        sid = "cs_test_" + secrets.token_hex(29)
        s = {
            "id": sid,
            "object": "checkout.session",
            "amount_subtotal": total,
            "amount_total": total,
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "created": int(created) if created is not None else now,
            "currency": currency,
            "customer_details": None,
            "expires_at": now + 24 * 3600,
            "livemode": False,
            "metadata": metadata,
            "mode": mode,
            "payment_intent": None,
            "payment_link": payment_link,
            "payment_status": "unpaid",
            "status": "open",
            "success_url": params.get("success_url"),
            "url": "%s/pay/%s" % (self.url, sid),
            "_lines": lines,     # the fake's own notes (hosted page, ordering); not sent
            "_n": len(self._order),
        }
        self.sessions[sid] = s
        self._order.append(sid)
        return s

    def _public(self, s):
        return {k: v for k, v in s.items() if not k.startswith("_")}

    def _list(self, q):
        limit = _int(q.get("limit", "10"), "limit")
        if not 1 <= limit <= 100:
            raise StripeError(400, "invalid_request_error", "Invalid limit: must be between 1 and 100",
                              "parameter_invalid_integer", "limit")
        # Newest first, like Stripe; ties in `created` keep creation order (later first).
        rows = sorted(self.sessions.values(), key=lambda s: (s["created"], s["_n"]), reverse=True)
        for op, test in (("gte", lambda a, b: a >= b), ("gt", lambda a, b: a > b),
                         ("lte", lambda a, b: a <= b), ("lt", lambda a, b: a < b)):
            key = "created[%s]" % op
            if key in q:
                bound = _int(q[key], key)
                rows = [s for s in rows if test(s["created"], bound)]
        if "created" in q:
            bound = _int(q["created"], "created")
            rows = [s for s in rows if s["created"] == bound]
        for field in ("status", "payment_link", "payment_intent"):
            if field in q:
                rows = [s for s in rows if s.get(field) == q[field]]
        ids = [s["id"] for s in rows]
        for cursor in ("starting_after", "ending_before"):
            if cursor in q and q[cursor] not in self.sessions:
                raise StripeError(400, "invalid_request_error", "No such checkout.session: '%s'" % q[cursor],
                                  "resource_missing", cursor)
        if "starting_after" in q:
            start = ids.index(q["starting_after"]) + 1 if q["starting_after"] in ids else len(ids)
            page = rows[start:start + limit]
            more = start + limit < len(rows)
        elif "ending_before" in q:
            end = ids.index(q["ending_before"]) if q["ending_before"] in ids else 0
            page = rows[max(0, end - limit):end]
            more = end - limit > 0
        else:
            page = rows[:limit]
            more = len(rows) > limit
        return {"object": "list", "data": [self._public(s) for s in page], "has_more": more,
                "url": "/v1/checkout/sessions"}

    def _replay(self, ikey, form_pairs):
        """(fingerprint of the request, the stored (status, body) when this Idempotency-Key was used
        before with the same parameters, else None); the key reused with other parameters is an error."""
        fingerprint = hashlib.sha256(json.dumps(sorted(form_pairs)).encode()).hexdigest()
        if ikey and ikey in self._idem:
            old_fp, status, body = self._idem[ikey]
            if old_fp != fingerprint:
                raise StripeError(400, "idempotency_error", "Keys for idempotent requests can only be used "
                                  "with the same parameters they were first used with.")
            return fingerprint, (status, json.loads(json.dumps(body)))
        return fingerprint, None

    def handle_api(self, method, path, query, form_pairs, headers):
        """Answer one /v1 request: (status, json body)."""
        auth = headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else ""
        if not key or (self.api_key and key != self.api_key):
            masked = (key[:8] + "*" * 4 + key[-4:]) if len(key) > 12 else "***"
            raise StripeError(401, "invalid_request_error", "Invalid API Key provided: %s" % masked)
        if path.startswith(("/v1/refunds", "/v1/charges", "/v1/disputes")):
            return self._money_api(method, path, query, form_pairs, headers)
        with self._lock:
            if method == "POST" and path == "/v1/checkout/sessions":
                ikey = headers.get("Idempotency-Key")
                fingerprint, replay = self._replay(ikey, form_pairs)
                if replay:
                    return replay
                s = self._create(parse_pairs(form_pairs))
                body = self._public(s)
                if ikey:
                    self._idem[ikey] = (fingerprint, 200, body)
                return 200, json.loads(json.dumps(body))
            if method == "GET" and path == "/v1/checkout/sessions":
                return 200, self._list(query)
            if method == "GET" and path == "/v1/webhook_endpoints":
                return 200, {"object": "list", "data": json.loads(json.dumps(self.webhook_endpoints)),
                             "has_more": False, "url": "/v1/webhook_endpoints"}
            m = _SESSION_PATH.match(path)
            if m and method == "GET":
                s = self.sessions.get(m.group(1))
                if s is None:
                    raise StripeError(404, "invalid_request_error", "No such checkout.session: '%s'" % m.group(1),
                                      "resource_missing", "session")
                return 200, self._public(s)
        m = _EXPIRE_PATH.match(path)
        if m and method == "POST":
            return 200, self._public(self.expire(m.group(1)))
        raise StripeError(404, "invalid_request_error", "Unrecognized request URL (%s: %s)." % (method, path))

    # -- refunds, charges, disputes (issue 13) ----------------------------------------------------

    def _charge_of(self, pi):
        """The charge of a paid payment intent (made on first need, as the fake pays without one)."""
        for ch in self.charges.values():
            if ch["payment_intent"] == pi:
                return ch
        session = next((s for s in self.sessions.values() if s.get("payment_intent") == pi), None)
        if session is None:
            return None
        ch = {"id": stripe_events.new_id("ch", 24), "object": "charge", "amount": session["amount_total"],
              "amount_refunded": 0, "currency": session["currency"], "payment_intent": pi, "paid": True,
              "refunded": False, "disputed": False, "status": "succeeded", "created": int(time.time()),
              "refunds": {"object": "list", "data": [], "has_more": False}}
        self.charges[ch["id"]] = ch
        return ch

    def _session_charge(self, session_id):
        s = self.sessions.get(session_id)
        if s is None or not s.get("payment_intent"):
            raise KeyError("session %s is not paid" % session_id)
        return self._charge_of(s["payment_intent"])

    def fail_next_refund(self, status=400, type_="invalid_request_error", message="Refund refused (test).",
                         made=False):
        """The next POST /v1/refunds answers `status` with this error; made=True: the refund IS made (and
        kept for its idempotency key) and only the answer is lost (status 500)."""
        with self._lock:
            self.refund_faults.append({"status": status, "type": type_, "message": message, "made": made})

    def _refund(self, ch, params, ikey=None):
        amount = _int(params.get("amount", ch["amount"] - ch["amount_refunded"]), "amount")
        if ch["amount_refunded"] >= ch["amount"]:
            raise StripeError(400, "invalid_request_error", "Charge %s has already been refunded." % ch["id"],
                              "charge_already_refunded", None)
        if not 0 < amount <= ch["amount"] - ch["amount_refunded"]:
            raise StripeError(400, "invalid_request_error", "Refund amount (%d) is greater than unrefunded amount "
                              "on charge (%d)" % (amount, ch["amount"] - ch["amount_refunded"]), "amount_too_large",
                              "amount")
        re_ = {"id": stripe_events.new_id("re", 24), "object": "refund", "amount": amount, "charge": ch["id"],
               "currency": ch["currency"], "payment_intent": ch["payment_intent"], "status": "succeeded",
               "reason": params.get("reason"), "metadata": params.get("metadata") or {}, "created": int(time.time())}
        self.refunds[re_["id"]] = re_
        ch["amount_refunded"] += amount
        ch["refunded"] = ch["amount_refunded"] >= ch["amount"]
        ch["refunds"]["data"].insert(0, re_)
        return re_

    def _send_later(self, obj, type_):
        threading.Thread(target=self.send_event, args=(obj, type_), daemon=True).start()

    def dashboard_refund(self, session_id, amount=None):
        """A refund made in Stripe's Dashboard: sends charge.refunded. Returns the refund."""
        with self._lock:
            ch = self._session_charge(session_id)
            re_ = self._refund(ch, {} if amount is None else {"amount": str(amount)})
            obj = json.loads(json.dumps(ch))
        self.send_event(obj, "charge.refunded")
        return re_

    def open_dispute(self, session_id, reason="fraudulent"):
        with self._lock:
            ch = self._session_charge(session_id)
            ch["disputed"] = True
            dp = {"id": stripe_events.new_id("dp", 24), "object": "dispute", "amount": ch["amount"], "charge": ch["id"],
                  "currency": ch["currency"], "payment_intent": ch["payment_intent"], "reason": reason,
                  "status": "needs_response", "created": int(time.time())}
            self.disputes[dp["id"]] = dp
            obj = json.loads(json.dumps(dp))
        self.send_event(obj, "charge.dispute.created")
        return obj

    def close_dispute(self, dispute_id, status="won"):
        with self._lock:
            dp = self.disputes[dispute_id]
            dp["status"] = status
            obj = json.loads(json.dumps(dp))
        self.send_event(obj, "charge.dispute.closed")
        return obj

    def _money_api(self, method, path, query, form_pairs, headers):
        parts = path.strip("/").split("/")
        kinds = {"refunds": self.refunds, "charges": self.charges, "disputes": self.disputes}
        with self._lock:
            if method == "GET" and len(parts) == 3 and parts[1] in kinds:
                obj = kinds[parts[1]].get(parts[2])
                if obj is None:
                    raise StripeError(404, "invalid_request_error", "No such %s: '%s'" % (parts[1][:-1], parts[2]),
                                      "resource_missing", "id")
                return 200, json.loads(json.dumps(obj))
            if not (method == "POST" and parts == ["v1", "refunds"]):
                raise StripeError(404, "invalid_request_error", "Unrecognized request URL (%s: %s)." % (method, path))
            params = parse_pairs(form_pairs)
            ikey = headers.get("Idempotency-Key")
            fingerprint, replay = self._replay(ikey, form_pairs)
            if replay:
                return replay
            fault = self.refund_faults.pop(0) if self.refund_faults else None
            if fault and not fault["made"]:
                raise StripeError(fault["status"], fault["type"], fault["message"])
            if params.get("charge"):
                ch = self.charges.get(params["charge"])
            elif params.get("payment_intent"):
                ch = self._charge_of(params["payment_intent"])
            else:
                raise StripeError(400, "invalid_request_error", "One of the following params should be provided for "
                                  "this request: payment_intent or charge.", "parameter_missing", None)
            if ch is None:
                raise StripeError(400, "invalid_request_error", "No such payment_intent: '%s'"
                                  % params.get("payment_intent", params.get("charge")), "resource_missing",
                                  "payment_intent")
            re_ = self._refund(ch, params, ikey)
            body = json.loads(json.dumps(re_))
            if ikey:
                self._idem[ikey] = (fingerprint, 200, body)
            charge = json.loads(json.dumps(ch))
        self._send_later(charge, "charge.refunded")
        if fault:
            raise StripeError(fault["status"], fault["type"], fault["message"])
        return 200, body

    # -- hosted pages --------------------------------------------------------------------------

    def hosted_page(self, sid, error=None, card=None):
        """(status, html) of the hosted checkout page; `error` and `card` re-show a declined attempt."""
        with self._lock:
            s = self.sessions.get(sid)
            s = json.loads(json.dumps(s)) if s else None
        if s is None:
            return 404, _page("Not found", "<p>This checkout link is not valid.</p>")
        money = "%s %.2f" % (s["currency"].upper(), s["amount_total"] / 100)
        lines = "".join("<li>%s &times; %d</li>" % (html.escape(li["description"]), li["quantity"])
                        for li in s["_lines"])
        back = ('<p><a id="cancel" href="%s">Cancel and go back</a></p>' % html.escape(s["cancel_url"])
                if s.get("cancel_url") else "")
        if s["status"] == "complete":
            body = "<p>This session is already paid.</p>"
        elif s["status"] == "expired":
            body = '<p id="expired">This checkout session has expired. Nothing was charged.</p>' + back
        else:
            body = _card_form(sid, money, error, card) + back
        return (402 if error else 200), _page("Checkout", '<p class="test">TEST MODE</p><h1>Fake Stripe Checkout</h1>'
                                              '<ul>%s</ul><p class=total>Total %s</p>%s' % (lines, money, body))

    # -- the card form (Stripe's test mode) ----------------------------------------------------

    def pay_with_card(self, session_id, number, exp=None, cvc=None):
        """Pay as the hosted page's form does: returns (outcome, message), see card_outcome(). Only
        "succeeded" pays (and sends checkout.session.completed); any other outcome leaves the session
        open and sends nothing, so the player can try another card. Raises KeyError for no such session."""
        with self._lock:
            s = self.sessions.get(session_id)
            if s is None:
                raise KeyError(session_id)
            if s["status"] != "open":
                return "session_" + s["status"], "This checkout session is no longer open."
        outcome, message = card_outcome(number, exp, cvc)
        with self._lock:        # the last 4 digits only, as Stripe's dashboard shows them
            self.attempts.append({"session": session_id, "last4": re.sub(r"\D", "", number or "")[-4:],
                                  "outcome": outcome, "t": time.time()})
        if outcome == "succeeded":
            self.pay(session_id)
        return outcome, message


# Stripe's test mode: these card numbers give these outcomes (docs.stripe.com/testing), with the
# message Stripe's checkout page shows. Any future expiry and any 3-digit CVC go with them.
TEST_CARDS = {
    "4242424242424242": ("succeeded", ""),
    "4000000000000002": ("generic_decline", "Your card was declined."),
    "4000000000009995": ("insufficient_funds", "Your card has insufficient funds."),
}
NON_TEST_CARD = ("Your card was declined. Your request was in test mode, but used a non test card. "
                 "For a list of valid test cards, visit: https://stripe.com/docs/testing.")
DEFAULT_EXP, DEFAULT_CVC = "12 / 34", "123"


def spaced(number):
    """'4242424242424242' -> '4242 4242 4242 4242', as cards are printed."""
    return " ".join(number[i:i + 4] for i in range(0, len(number), 4))


def luhn_ok(digits):
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def card_outcome(number, exp=None, cvc=None, now=None):
    """(outcome, message) for a card typed into the checkout page: "succeeded" (message ""), a decline
    code from TEST_CARDS, "card_declined" for a valid number that is not a test card, or the form's
    own error (incomplete_number, incorrect_number, incomplete_expiry, invalid_expiry, expired_card,
    incomplete_cvc). `exp` "MM / YY" and `cvc` default to a valid pair."""
    digits = re.sub(r"[\s-]", "", str(number or ""))[:40]
    if not re.fullmatch(r"[0-9]{13,}", digits):
        return "incomplete_number", "Your card number is incomplete."
    if len(digits) > 19 or not luhn_ok(digits):
        return "incorrect_number", "Your card number is invalid."
    m = re.fullmatch(r"\s*(\d{1,2})\s*/\s*(\d{2}|\d{4})\s*", str(DEFAULT_EXP if exp is None else exp)[:20])
    if not m:
        return "incomplete_expiry", "Your card's expiration date is incomplete."
    month, year = int(m.group(1)), int(m.group(2))
    year += 2000 if year < 100 else 0
    if not 1 <= month <= 12:
        return "invalid_expiry", "Your card's expiration date is invalid."
    t = time.gmtime(now)
    if (year, month) < (t.tm_year, t.tm_mon):
        return "expired_card", "Your card's expiration date is in the past."
    if not re.fullmatch(r"\d{3,4}", str(DEFAULT_CVC if cvc is None else cvc).strip()[:10]):
        return "incomplete_cvc", "Your card's security code is incomplete."
    return TEST_CARDS.get(digits) or ("card_declined", NON_TEST_CARD)


def _card_form(sid, money, error=None, card=None):
    """The open session's form: card, expiry, CVC, Pay; the test cards; a "Let it expire" button."""
    alert = '<p id="card-error" role="alert">%s</p>' % html.escape(error) if error else ""
    value = html.escape("4242 4242 4242 4242" if card is None else card[:40], quote=True)
    cards = "".join("<li><code>%s</code> %s</li>" % (spaced(n), what)
                    for n, what in zip(TEST_CARDS, ("succeeds", "is declined", "has insufficient funds")))
    return ('<form id="card-form" method="post" action="/pay/%s">'
            '<label>Card number <input id="card" name="card" value="%s" inputmode="numeric" autocomplete="cc-number">'
            '</label><div class=row><label>Expiry <input id="exp" name="exp" value="%s" autocomplete="cc-exp"></label>'
            '<label>CVC <input id="cvc" name="cvc" value="%s" inputmode="numeric" autocomplete="cc-csc"></label></div>'
            '%s<button id="pay" type="submit">Pay %s</button></form>'
            '<div class=cards><p>Test cards (any future expiry, any 3-digit CVC):</p><ul>%s</ul></div>'
            '<form method="post" action="/pay/%s/expire"><button id="expire" class=quiet type="submit">'
            'Let it expire</button></form>'
            % (sid, value, DEFAULT_EXP, DEFAULT_CVC, alert, money, cards, sid))


def _page(title, body):
    return ("<!doctype html><html><head><meta charset=utf-8><meta name=viewport "
            "content='width=device-width,initial-scale=1'><title>%s</title><style>body{font-family:sans-serif;"
            "margin:1.5em;max-width:30em}button{font-size:1.2em;padding:.6em 1.2em;background:#635bff;color:#fff;"
            "border:0;border-radius:6px;width:100%%;margin:.5em 0}button.quiet{background:#fff;color:#635bff;"
            "border:1px solid #635bff;font-size:1em}label{display:block;margin:.4em 0;font-size:.9em;color:#444}"
            "input{display:block;width:100%%;box-sizing:border-box;font-size:1.1em;padding:.45em;margin-top:.2em}"
            ".row{display:flex;gap:1em}.row label{flex:1}#card-error{color:#df1b41;font-weight:600}"
            ".test{display:inline-block;background:#ffde92;color:#a04100;font-size:.75em;font-weight:700;"
            "padding:.2em .5em;border-radius:4px}.cards{font-size:.85em;color:#555}"
            "</style></head><body>%s</body></html>" % (title, body)).encode()


class _Handler(BaseHTTPRequestHandler):
    fake = None
    protocol_version = "HTTP/1.0"     # one request per connection: nothing lingers at stop()
    server_version = "FakeStripe/1.0"
    timeout = 30                      # an idle (preconnected) socket is dropped after this

    def setup(self):
        super().setup()
        with self.fake._lock:
            self.fake._conns.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.fake._lock:
                self.fake._conns.discard(self.connection)

    def log_message(self, *args):
        pass

    def _read(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise StripeError(413, "invalid_request_error", "Request body too large.")
        return self.rfile.read(length) if length else b""

    def date_time_string(self, timestamp=None):
        return super().date_time_string((time.time() if timestamp is None else timestamp) + self.fake.clock_offset)

    def _send(self, status, body, ctype="application/json", headers=()):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Request-Id", "req_" + secrets.token_hex(7))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method):
        split = urllib.parse.urlsplit(self.path)
        query_pairs = urllib.parse.parse_qsl(split.query, keep_blank_values=True)
        try:
            raw = self._read() if method == "POST" else b""
            form_pairs = urllib.parse.parse_qsl(raw.decode(), keep_blank_values=True)
        except StripeError as e:
            self._send(e.status, e.body)
            return
        headers = {k: v for k, v in self.headers.items()}
        with self.fake._lock:
            self.fake.requests.append(Recorded(method, split.path, dict(query_pairs), dict(form_pairs), headers))
        try:
            if split.path.startswith("/v1/"):
                status, body = self.fake.handle_api(method, split.path, dict(query_pairs), form_pairs, headers)
                self._send(status, body)
                return
            self._hosted(method, split.path, dict(query_pairs), dict(form_pairs))
        except StripeError as e:
            self._send(e.status, e.body)

    def _hosted(self, method, path, query, form=None):
        fake = self.fake
        m = _PAY_PATH.match(path)
        if m and method == "GET":
            status, body = fake.hosted_page(m.group(1))
            self._send(status, body, "text/html; charset=utf-8")
            return
        if m and method == "POST":
            self._checkout_post(m.group(1), form or {})
            return
        m = _PAY_EXPIRE_PATH.match(path)
        if m and method == "POST":
            self._checkout_expire(m.group(1))
            return
        m = _LINK_PATH.match(path)
        if m and method == "GET":
            link = fake.payment_links.get(m.group(1))
            if link is None:
                self._send(404, _page("Not found", "<p>No such payment link.</p>"), "text/html; charset=utf-8")
                return
            params = {"mode": "payment", "metadata": dict(link["metadata"]),
                      "line_items": [{"quantity": "1", "price_data": {
                          "currency": link["currency"], "unit_amount": str(link["amount"]),
                          "product_data": {"name": link["name"]}}}]}
            ref = query.get("client_reference_id")
            if ref and re.fullmatch(r"[A-Za-z0-9_-]{1,200}", ref):   # Stripe drops invalid values
                params["client_reference_id"] = ref
            with fake._lock:
                s = fake._create(params, payment_link=m.group(1))
            self._send(303, b"", "text/plain", [("Location", s["url"])])
            return
        self._send(404, _page("Not found", "<p>Nothing here.</p>"), "text/html; charset=utf-8")

    def _checkout_post(self, sid, form):
        """The card form's POST: 303 to success_url when paid, else the page again with the error."""
        fake = self.fake
        number = form["card"] if "card" in form else "4242424242424242"   # the old one-button form
        try:
            outcome, message = fake.pay_with_card(sid, number, form.get("exp"), form.get("cvc"))
        except KeyError:
            self._send(404, _page("Not found", "<p>No such session.</p>"), "text/html; charset=utf-8")
            return
        if outcome == "succeeded":
            with fake._lock:
                target = fake._success_url(fake.sessions[sid])
            if target:
                self._send(303, b"", "text/plain", [("Location", target)])
            else:
                self._send(200, _page("Paid", "<p>Payment complete.</p>"), "text/html; charset=utf-8")
            return
        if outcome.startswith("session_"):     # already paid or expired: show it as it is now
            self._send(303, b"", "text/plain", [("Location", "%s/pay/%s" % (self.fake.url, sid))])
            return
        status, body = fake.hosted_page(sid, error=message, card=number)
        self._send(status, body, "text/html; charset=utf-8")

    def _checkout_expire(self, sid):
        """"Let it expire": the session expires now (checkout.session.expired), then its page again."""
        try:
            self.fake.expire(sid)
        except StripeError as e:
            if e.status == 404:
                self._send(404, _page("Not found", "<p>No such session.</p>"), "text/html; charset=utf-8")
                return
        self._send(303, b"", "text/plain", [("Location", "%s/pay/%s" % (self.fake.url, sid))])

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")


def main(argv=None, prog="fake_stripe"):
    """Run the fake on its own (for trying the pay page by hand): `arcade fake-stripe`."""
    import argparse
    import os
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=12111)
    p.add_argument("--webhook-url", default=os.environ.get("FAKE_STRIPE_WEBHOOK_URL"))
    args = p.parse_args(argv)
    secret = os.environ.get("STRIPE_WEBHOOK_SECRET")
    fake = FakeStripe(webhook_url=args.webhook_url, webhook_secret=secret, port=args.port).start()
    print("fake Stripe on %s (webhooks to %s)" % (fake.url, args.webhook_url or "nowhere"), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
