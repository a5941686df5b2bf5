"""Issue 10's fuzzing campaign (hypothesis): hostile webhook bodies and headers, pay-page requests, and
MQTT payloads at the firmware. `make test` runs a few hundred examples of each; `make fuzz` sets
ARCADE_FUZZ_EXAMPLES=10000 (and a longer MicroPython run) and prints the counts.

Acceptable outcomes only: a 2xx/4xx with nothing credited, or the right credit for a well-formed paid
event; never a 5xx, never an exception (TESTING propagates them), never a pulse from a forged message.
The oracles are the price table written here and the coin pin, not the relay's own verdict."""
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import create_app
from relay.ledger import open_ledger
from tools.lab import stripe_events as se
from tools.lab.fake_stripe import FakeStripe

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("ARCADE_FUZZ_EXAMPLES", "150"))
MPY_CASES = int(os.environ.get("ARCADE_FUZZ_MPY_CASES", "300"))
SECRET = "whsec_fuzz"
API_KEY = "sk_test_fuzz_1234567"
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
# The price tables, written independently of the relay: (cabinet, amount, currency) -> credits.
PRICES = {("cab1", 100, "usd"): 1, ("cab1", 250, "usd"): 3, ("cab2", 50, "usd"): 1}
COINS = {"cab1": 2, "cab2": 1}
REPORT = {}


@pytest.fixture(scope="module")
def fake():
    with FakeStripe(api_key=API_KEY) as f:
        yield f


@pytest.fixture(scope="module")
def app(tmp_path_factory, fake):
    db = tmp_path_factory.mktemp("fuzz") / "arcade.db"
    app = create_app({"TESTING": True, "ARCADE_DB": str(db), "STRIPE_WEBHOOK_SECRET": SECRET,
                      "MQTT_URL": "mqtt://127.0.0.1:1", "STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": fake.url,
                      "ARCADE_PUBLIC_URL": "https://pay.fuzz.test", "ARCADE_PROXY_HOPS": "1"})
    with open_ledger(db) as led:
        led.add_cabinet("cab1", price_cents=100, bundles=[(3, 250)], coins_per_credit=2)
        led.add_cabinet("cab2", price_cents=50)
        led.add_cabinet("off", price_cents=100)
        led.set_enabled("off", False)
        for cab in ("cab1", "cab2"):
            led.record_status(cab, True, {"t": "status", "cab": cab, "online": True})
    return app


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    if REPORT:
        line = "fuzz: " + json.dumps(REPORT, sort_keys=True)
        print("\n" + line)
        out = os.environ.get("ARCADE_FUZZ_REPORT")
        if out:
            with open(out, "a") as f:
                f.write(line + "\n")


def count(name, key):
    REPORT.setdefault(name, Counter())[str(key)] += 1


# -- webhook ----------------------------------------------------------------------------------------

BIG = st.sampled_from([2 ** 31, 2 ** 53 + 1, 2 ** 63 - 1, 2 ** 63, 2 ** 64, -(2 ** 63) - 1, 10 ** 30, -1, 0])
HOSTILE_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40) | \
    st.sampled_from(["", "cab1\n", "cab1\x00", "\u202ecab1", "../cab1", "cab1 ", "CAB1", "c" * 300, "\ud7ff"])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | BIG | st.floats(allow_nan=False) | HOSTILE_TEXT,
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(HOSTILE_TEXT, c, max_size=3), max_leaves=12)
CABS = st.sampled_from(["cab1", "cab2", "off", "nope"]) | HOSTILE_TEXT | JSON
AMOUNTS = st.sampled_from([100, 250, 50, 99, 0]) | BIG | st.integers() | JSON
SESSION_IDS = st.builds(lambda n: "cs_test_fz%08d" % n, st.integers(0, 10 ** 8)) | HOSTILE_TEXT | JSON
TYPES = st.sampled_from(["checkout.session.completed", "checkout.session.async_payment_succeeded",
                         "checkout.session.async_payment_failed", "checkout.session.expired",
                         "payment_intent.succeeded", "charge.refunded"]) | HOSTILE_TEXT | JSON


@st.composite
def events(draw):
    session = draw(st.fixed_dictionaries({}, optional={
        "id": SESSION_IDS, "amount_total": AMOUNTS,
        "currency": st.sampled_from(["usd", "USD", "eur", ""]) | JSON,
        "payment_status": st.sampled_from(["paid", "unpaid", "no_payment_required"]) | JSON,
        "metadata": st.fixed_dictionaries({}, optional={"cabinet_id": CABS, "machine_id": CABS}) | JSON,
        "client_reference_id": CABS, "payment_link": HOSTILE_TEXT | JSON, "livemode": JSON}))
    evt = draw(st.fixed_dictionaries({}, optional={
        "id": st.builds(lambda n: "evt_fz%d" % n, st.integers(0, 10 ** 9)) | HOSTILE_TEXT | JSON,
        "type": TYPES, "livemode": st.sampled_from([False, True]) | JSON,
        "data": st.fixed_dictionaries({"object": st.just(session)}) | JSON}))
    return evt


@st.composite
def paid_events(draw):
    """Well-formed paid events (the price table's amounts, or near them), with one field possibly hostile."""
    cab, amount = draw(st.sampled_from([("cab1", 100), ("cab1", 250), ("cab2", 50), ("cab1", 50), ("off", 100)]))
    session = se.checkout_session(cab, amount, session_id="cs_test_ok%d" % draw(st.integers(0, 10 ** 12)))
    evt = se.event(session, draw(st.sampled_from(["checkout.session.completed",
                                                  "checkout.session.async_payment_succeeded"])))
    if draw(st.booleans()):
        where = draw(st.sampled_from(["amount_total", "currency", "metadata", "payment_status", "livemode"]))
        (evt if where == "livemode" else session)[where] = draw(JSON)
    return evt


def raw_bodies():
    """Bodies json.dumps would never write: duplicate keys, deep nesting, odd encodings."""
    dup = st.builds(lambda a, b: ('{"id":"evt_dup%d","type":"checkout.session.completed","data":{"object":'
                                  '{"id":"cs_test_dup%d","amount_total":100,"amount_total":%d,"currency":"usd",'
                                  '"payment_status":"paid","metadata":{"cabinet_id":"cab1"}}}}' % (a, a, b)).encode(),
                    st.integers(0, 10 ** 9), st.sampled_from([100, 250, 2 ** 70, -1]))
    deep = st.integers(1, 5000).map(lambda d: b'{"a":' * d + b"1" + b"}" * d)
    deep_list = st.integers(1, 100000).map(lambda d: b"[" * d + b"]" * d)
    odd = st.binary(max_size=300) | st.sampled_from([b"", b"null", b"[]", b'"x"', b"1e999999", b"\xef\xbb\xbf{}",
                                                     b'{"type": NaN}', b'{"id": Infinity}'])
    return dup | deep | deep_list | odd


def expected_credit(evt):
    """Credits the event buys by the price table here, or None when it must credit nothing."""
    try:
        s = evt["data"]["object"]
        if evt["type"] not in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
            return None
        if evt["type"] == "checkout.session.completed" and s.get("payment_status") != "paid":
            return None
        if evt.get("livemode") is not False:
            return None
        meta = s.get("metadata") if isinstance(s.get("metadata"), dict) else {}
        cab = meta.get("cabinet_id") or meta.get("machine_id") or s.get("client_reference_id")
        amount, cur = s.get("amount_total"), s.get("currency")
        if type(amount) is not int or not isinstance(cur, str):
            return None
        return PRICES.get((str(cab), amount, cur.lower()))
    except (KeyError, TypeError, AttributeError):
        return None


def post_webhook(client, body, header):
    return client.post("/stripe/webhook", data=body,
                       headers={"Content-Type": "application/json", "Stripe-Signature": header})


@FUZZ
@given(body=paid_events().map(lambda e: json.dumps(e).encode()) | events().map(lambda e: json.dumps(e).encode())
       | events().map(lambda e: json.dumps(
    e, ensure_ascii=False).encode()) | raw_bodies(),
       header=st.sampled_from(["good"] * 6 + ["bad"]) | st.text(
           alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=200))
def test_signed_hostile_webhooks_answer_4xx_or_credit_right(app, body, header):
    client = app.test_client()
    if header == "good":
        header = se.signature_header(body, SECRET)
    elif header == "bad":
        header = se.signature_header(body, "whsec_someone_else")
    r = post_webhook(client, body, header)
    assert r.status_code < 500, (r.status_code, body[:200])
    count("webhook", r.status_code)
    result = (r.get_json(silent=True) or {}).get("result")
    if result == "queued":
        evt = json.loads(body)
        credits = expected_credit(evt)
        assert credits is not None, "credited an event that buys nothing: %r" % body[:300]
        s = evt["data"]["object"]
        meta = s.get("metadata") if isinstance(s.get("metadata"), dict) else {}
        cab = str(meta.get("cabinet_id") or meta.get("machine_id") or s.get("client_reference_id"))
        with open_ledger(app.config["ARCADE_DB"]) as led:
            p = led.get_payment(s["id"])
        assert (p["cabinet_id"], p["credits"], p["pulses"]) == (cab, credits, credits * COINS[cab])
        count("webhook_result", "queued (checked against the price table)")
    else:
        count("webhook_result", result or "refused")


# -- pay pages --------------------------------------------------------------------------------------

ADDRS = st.ip_addresses().map(str) | st.sampled_from(["", "unknown", "::ffff:10.0.0.1", "fe80::1%eth0", "999.1.1.1"])
FIELD = st.sampled_from(["1", "3", "100", "250", "-1", "9" * 40, "", "x" * 3000]) | HOSTILE_TEXT
PATHS = st.sampled_from(["/pay/cab1", "/pay/cab2", "/pay/off", "/pay/nope", "/paid", "/paid/status", "/cancel",
                         "/healthz", "/stripe/webhook", "/pay/", "/pay/cab1/x", "/pay/%00", "/pay/" + "c" * 300,
                         "/pay/..%2fcab1", "/pay/cab1%0a"])


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "POST", "POST", "HEAD", "PUT", "OPTIONS"]), path=PATHS,
       query=st.dictionaries(st.sampled_from(["session_id", "cabinet", "x", "option"]), FIELD, max_size=3),
       form=st.dictionaries(st.sampled_from(["option", "amount", "credits", "nonce", "csrf_token", "pad"]), FIELD,
                            max_size=6),
       real_form=st.sampled_from([False, False, True]), addr=ADDRS, xff=st.none() | ADDRS | HOSTILE_TEXT.filter(lambda s: not any(c in s for c in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")),
       host=st.sampled_from(["localhost", "pay.fuzz.test", "evil.example", "127.0.0.1:8000", "[::1]"]))
def test_hostile_pay_page_requests_never_5xx_and_never_sell_without_the_page(app, fake, method, path, query, form,
                                                                              real_form, addr, xff, host):
    client = app.test_client()
    headers = {"Host": host}
    if xff is not None:
        headers["X-Forwarded-For"] = xff.encode("utf-8", "surrogatepass").decode("latin-1")
    env = {"REMOTE_ADDR": addr}
    if real_form:
        method, path = "POST", path if path in ("/pay/cab1", "/pay/cab2") else "/pay/cab1"
        page = client.get(path, headers={"Host": "localhost"}, environ_base={"REMOTE_ADDR": "192.0.2.1"})
        html = page.get_data(as_text=True)
        keep = {k: v for k, v in form.items() if k == "pad"}
        block = __import__("re").search(r'<form method="post".*?</form>', html, __import__("re").S)
        form = dict(__import__("re").findall(r'name="(\w+)" value="([^"]*)"', block.group(0)) if block else {},
                    **keep)
    before = len(fake.sessions)
    r = client.open(path, method=method, query_string=query, data=form, headers=headers, environ_base=env)
    if path == "/healthz" and r.status_code == 503:     # its answer while the broker is down: nothing more
        assert method == "HEAD" or r.get_json() == {"status": "not ok"}
    else:
        assert r.status_code < 500, (method, path, r.status_code)
    count("pay", r.status_code)
    made = len(fake.sessions) - before
    if made:
        assert real_form and r.status_code == 303 and made == 1 and host != "evil.example"
        count("pay_result", "session created from a real page")


# -- MQTT payloads at the firmware ------------------------------------------------------------------

@pytest.fixture(scope="module")
def firmware():
    for sub in ("build/umqtt", "tools/hostsim", "firmware", "tests/fw"):
        p = str(ROOT / sub)
        if p not in sys.path:
            sys.path.insert(0, p)
    import hosttime  # noqa: F401
    import fuzzmsg
    import machine
    import protocol
    from cabinet import Cabinet
    from coin import Coin
    from fwutil import SECRET, clock, scratch
    from journal import Journal
    c = clock()
    coin = Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms)
    cab = Cabinet("cab1", SECRET, Journal(scratch()), coin, None)
    import fwmsgs
    from fwutil import EPOCH
    return {"cab": cab, "pin": machine.pins[25], "protocol": protocol, "fuzzmsg": fuzzmsg, "fwmsgs": fwmsgs,
            "epoch": EPOCH}


LEDGER = "0123456789abcdef0123456789abcdef"
FW_KEY = "5e1f0c2a9b7d4e6f8a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f"   # tests/fw/fwutil.SECRET


SEQ = [1000]


@st.composite
def good_credits(draw):
    """Credits the relay would send (next sequence number), some with one field made hostile."""
    SEQ[0] += 1
    fields = {"cab": "cab1", "ledger": LEDGER, "seq": SEQ[0], "credits": draw(st.integers(1, 3)),
              "pulses": draw(st.integers(1, 6)), "session": "cs_test_g%d" % SEQ[0], "ts": 1764165000}
    if draw(st.booleans()):
        where = draw(st.sampled_from(sorted(fields)))
        fields[where] = draw(st.integers(-2, 300) | BIG | HOSTILE_TEXT)
    return fields, draw(st.sampled_from([True, True, True, False]))


@st.composite
def credit_payloads(draw):
    """(payload, signed_by_the_cabinet_key, fields) with hostile fields; the signature over whatever was drawn."""
    fields = {"cab": draw(st.sampled_from(["cab1", "cab2", ""]) | HOSTILE_TEXT),
              "ledger": draw(st.sampled_from([LEDGER, LEDGER.upper(), LEDGER[:31], ""]) | HOSTILE_TEXT),
              "seq": draw(st.integers(-3, 10 ** 6) | BIG), "credits": draw(st.integers(-2, 300) | BIG),
              "pulses": draw(st.integers(-2, 300) | BIG), "session": draw(HOSTILE_TEXT),
              "ts": draw(st.integers(0, 2 ** 40) | BIG)}
    signed = draw(st.booleans())
    return fields, signed


@FUZZ
@given(case=good_credits() | credit_payloads() | st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
def test_hostile_mqtt_payloads_never_pulse_unless_good(firmware, case):
    protocol, cab, pin = firmware["protocol"], firmware["cab"], firmware["pin"]
    may = 0
    if isinstance(case, tuple):
        fields, signed = case
        key = FW_KEY.encode() if signed else b"f" * 64
        fields = dict(fields, epoch=firmware["epoch"], exp=0)
        order = ("cab", "ledger", "seq", "credits", "pulses", "session", "ts", "epoch", "exp")
        try:   # signed like the relay signs (docs/protocol.md), whatever the types drawn
            sig = protocol.sign(key, protocol.canonical("credit", [v if isinstance(v, str) else str(v)
                                                                   for v in (fields[k] for k in order)]))
        except ValueError:     # a newline in a signed field: the relay could never sign it
            count("mqtt", "unsignable")
            return
        payload = json.dumps(dict(fields, t="credit", sig=sig)).encode()
        ints = all(type(fields[k]) is int for k in ("seq", "credits", "pulses", "ts"))
        strs = all(isinstance(fields[k], str) for k in ("cab", "ledger", "session"))
        state = cab.state
        good = (signed and ints and strs and fields["cab"] == "cab1" and len(fields["ledger"]) == 32
                and all(c in "0123456789abcdef" for c in fields["ledger"]) and fields["seq"] >= 1
                and fields["credits"] >= 1 and 1 <= fields["pulses"] <= 255 and fields["session"]
                and fields["session"] not in state["recent"]
                and not (fields["ledger"] == state["ledger"] and fields["seq"] <= state["last"]))
        may = fields["pulses"] if good else 0
        kind = "signed" if signed else "forged"
    else:
        payload, kind = case, "raw"
    before = len(pin.history)
    result, ack = cab.handle(payload)
    got = len([1 for t, v in pin.history[before:] if v == 1])
    assert got == may, (kind, payload[:200], result, got, may)
    if may:     # a hostile-but-valid seq (say 2^63) moved the cabinet on: good credits follow it
        SEQ[0] = max(SEQ[0], fields["seq"])
    if ack is not None:
        assert firmware["fwmsgs"].check_ack(ack, FW_KEY.encode())
    count("mqtt", "%s:%s" % (kind, result))


def test_firmware_campaign_under_cpython(firmware):
    """The same generator as the MicroPython run below (tests/fw/fuzzmsg.py), EXAMPLES cases."""
    import machine
    from cabinet import Cabinet
    from coin import Coin
    from fwutil import SECRET, clock, scratch
    from journal import Journal
    c = clock()
    cab = Cabinet("cab1", SECRET, Journal(scratch()), Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms), None)
    kinds, seen, allowed = firmware["fuzzmsg"].run(EXAMPLES, 11, cab, machine.pins[25])
    assert seen == allowed > 0
    REPORT["mqtt_campaign_cpython"] = dict(kinds, cases=EXAMPLES, pulses=seen)


def test_firmware_campaign_under_micropython():
    import shutil
    node = shutil.which("node")
    assert node, "node is not installed: apt-get install nodejs npm, then make setup"
    started = time.monotonic()
    proc = subprocess.run([node, str(ROOT / "tools/mpy/vm/run.mjs"), "--script", "tools/mpy/vm/fuzz_fw.py", "--",
                           str(MPY_CASES), "5"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("FUZZ ")]
    assert line, proc.stdout[-2000:]
    got = json.loads(line[-1][5:])
    assert got["cases"] == MPY_CASES and got["pulses_allowed"] > 0
    REPORT["mqtt_campaign_micropython"] = dict(got["kinds"], cases=got["cases"],
                                               seconds=round(time.monotonic() - started, 1))
