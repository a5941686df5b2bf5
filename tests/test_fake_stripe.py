"""The fake Stripe server, driven through the real stripe-python client (never mocked)."""
import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import stripe

from tools.lab.fake_stripe import FakeStripe, parse_pairs


@pytest.fixture
def fake():
    with FakeStripe(api_key="sk_test_fakekey123456") as f:
        yield f


@pytest.fixture
def client(fake):
    return fake.client()


def session_params(cab="cab1", amount=250, **extra):
    params = {
        "mode": "payment",
        "line_items": [{"quantity": 1, "price_data": {"currency": "usd", "unit_amount": amount,
                                                      "product_data": {"name": "Pixel Arcade - Pac-Man, 3 plays"}}}],
        "metadata": {"cabinet_id": cab, "credits": "3"},
        "client_reference_id": cab,
        "success_url": "http://relay.test/paid?session_id={CHECKOUT_SESSION_ID}",
        "cancel_url": "http://relay.test/cancel?cabinet=%s" % cab,
    }
    params.update(extra)
    return params


class _Receiver:
    """A tiny HTTP endpoint standing in for the relay's webhook; records the bodies and headers."""

    def __init__(self):
        self.got = []
        self.arrived = threading.Event()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append((body, dict(self.headers)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                outer.arrived.set()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = "http://127.0.0.1:%d/stripe/webhook" % self.server.server_address[1]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_create_records_form_fields_and_answers_like_stripe(fake, client):
    s = client.v1.checkout.sessions.create(session_params(), options={"idempotency_key": "pay-cab1-abc"})
    assert s.id.startswith("cs_test_")
    assert s.object == "checkout.session"
    assert s.amount_total == 250 and s.currency == "usd"
    assert s.status == "open" and s.payment_status == "unpaid"
    assert s.metadata["cabinet_id"] == "cab1" and s.client_reference_id == "cab1"
    assert s.url == "%s/pay/%s" % (fake.url, s.id)
    (req,) = fake.api_requests("POST")
    assert req.path == "/v1/checkout/sessions"
    assert req.idempotency_key == "pay-cab1-abc"
    assert req.api_key == "sk_test_fakekey123456"
    assert req.form["line_items[0][price_data][unit_amount]"] == "250"
    assert req.form["metadata[cabinet_id]"] == "cab1"
    assert req.form["success_url"] == "http://relay.test/paid?session_id={CHECKOUT_SESSION_ID}"


def test_idempotency_key_returns_the_same_session_and_refuses_other_params(client):
    a = client.v1.checkout.sessions.create(session_params(), options={"idempotency_key": "k1"})
    b = client.v1.checkout.sessions.create(session_params(), options={"idempotency_key": "k1"})
    assert a.id == b.id
    c = client.v1.checkout.sessions.create(session_params(), options={"idempotency_key": "k2"})
    assert c.id != a.id
    with pytest.raises(stripe.IdempotencyError):
        client.v1.checkout.sessions.create(session_params(amount=999), options={"idempotency_key": "k1"})


def test_retrieve_and_missing(client):
    a = client.v1.checkout.sessions.create(session_params())
    assert client.v1.checkout.sessions.retrieve(a.id).amount_total == 250
    with pytest.raises(stripe.InvalidRequestError) as e:
        client.v1.checkout.sessions.retrieve("cs_test_nope")
    assert e.value.http_status == 404 and e.value.code == "resource_missing"


def test_wrong_api_key_is_refused(fake):
    with pytest.raises(stripe.AuthenticationError):
        fake.client(api_key="sk_test_wrongwrongwrong").v1.checkout.sessions.list()
    assert fake.sessions == {}


@pytest.mark.parametrize("params, code", [
    ({"line_items": [{"quantity": 1, "price_data": {"currency": "usd", "unit_amount": 100}}]}, "parameter_missing"),
    ({"mode": "payment"}, "parameter_missing"),
    ({"mode": "payment", "line_items": [{"quantity": 1, "price_data": {"currency": "usd", "unit_amount": "x"}}]},
     "parameter_invalid_integer"),
])
def test_bad_create_is_a_400_and_creates_nothing(fake, client, params, code):
    with pytest.raises(stripe.InvalidRequestError) as e:
        client.v1.checkout.sessions.create(params)
    assert e.value.http_status == 400 and e.value.code == code
    assert fake.sessions == {}


def test_list_paginates_newest_first_with_created_filter(fake, client):
    base = 1_760_000_000
    made = [fake.add_session(created=base + i, metadata={"cabinet_id": "cab%d" % i})["id"] for i in range(25)]
    page = client.v1.checkout.sessions.list({"limit": 10})
    assert [s.id for s in page.data] == made[::-1][:10] and page.has_more
    everything = [s.id for s in page.auto_paging_iter()]
    assert everything == made[::-1]
    lists = [r for r in fake.api_requests("GET") if r.path == "/v1/checkout/sessions"]
    assert [r.query.get("starting_after") for r in lists] == [None, made[15], made[5]]
    recent = client.v1.checkout.sessions.list({"limit": 100, "created": {"gte": base + 20}})
    assert [s.id for s in recent.data] == made[20:][::-1] and not recent.has_more
    assert lists[0].query == {"limit": "10"}
    last = [r for r in fake.api_requests("GET") if r.path == "/v1/checkout/sessions"][-1]
    assert last.query["created[gte]"] == str(base + 20)


def test_list_filters_status_and_refuses_bad_limit(fake, client):
    a = fake.add_session()
    fake.add_session()
    fake.pay(a["id"])
    done = client.v1.checkout.sessions.list({"status": "complete"})
    assert [s.id for s in done.data] == [a["id"]]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.list({"limit": 101})


def test_hosted_page_pay_sends_signed_webhook_and_redirects(client):
    rx = _Receiver()
    secret = "whsec_test_fake"
    try:
        with FakeStripe(webhook_url=rx.url, webhook_secret=secret) as fake:
            s = fake.client().v1.checkout.sessions.create(session_params())
            with urllib.request.urlopen(s.url, timeout=5) as r:
                page = r.read().decode()
            assert "Pay USD 2.50" in page and "Pac-Man" in page and 'href="http://relay.test/cancel?cabinet=cab1"' in page

            class NoRedirect(urllib.request.HTTPRedirectHandler):
                def redirect_request(self, *a, **k):
                    return None
            opener = urllib.request.build_opener(NoRedirect)
            with pytest.raises(urllib.error.HTTPError) as e:
                opener.open(urllib.request.Request(s.url, data=b"", method="POST"), timeout=5)
            assert e.value.code == 303
            assert e.value.headers["Location"] == "http://relay.test/paid?session_id=%s" % s.id
            e.value.close()
            assert rx.arrived.wait(5)
            body, headers = rx.got[0]
            evt = stripe.Webhook.construct_event(body, headers["Stripe-Signature"], secret)
            assert evt.type == "checkout.session.completed"
            obj = evt.data.object
            assert obj.id == s.id and obj.payment_status == "paid" and obj.amount_total == 250
            assert obj.metadata["cabinet_id"] == "cab1"
            assert fake.webhooks[0][1] == 200
            again = fake.client().v1.checkout.sessions.retrieve(s.id)
            assert again.status == "complete" and again.payment_status == "paid"
            fake.pay(s.id)                     # paying twice sends nothing more
            assert len(rx.got) == 1
    finally:
        rx.close()


def test_payment_link_copies_metadata_and_client_reference_id(fake):
    link = fake.add_payment_link(100, metadata={"note": "sticker"})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(fake.payment_link_url(link) + "?client_reference_id=cab7", timeout=5)
    assert e.value.code == 303
    e.value.close()
    (s,) = fake.sessions.values()
    assert s["payment_link"] == link and s["client_reference_id"] == "cab7" and s["metadata"] == {"note": "sticker"}


def test_expire_sends_nothing_without_webhook_url_and_changes_status(fake, client):
    s = client.v1.checkout.sessions.create(session_params())
    expired = client.v1.checkout.sessions.expire(s.id)
    assert expired.status == "expired"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.expire(s.id)


def test_parse_pairs_nesting():
    got = parse_pairs([("a[b][0][c]", "1"), ("a[b][1][c]", "2"), ("m[k]", "v"), ("x", "y")])
    assert got == {"a": {"b": [{"c": "1"}, {"c": "2"}]}, "m": {"k": "v"}, "x": "y"}
    assert json.dumps(got)
