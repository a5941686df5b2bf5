"""The web side of `arcade demo --web` (tools/lab/webdemo.py): the demo page and the front that forwards
the rest to the relay.

    GET  /                          -> 303 /demo
    GET  /demo                      the page: one panel per cabinet (lamp, coins, credits, state, buttons,
                                    its pay page's QR), recent payments, card attempts on the fake Stripe
    GET  /demo/state                what the page polls (JSON)
    GET  /demo/qr/<cab>.svg         the cabinet's sticker QR (its pay page)
    POST /demo/cabinet/<cab>/<act>  unplug, plug, power-cut, power-on, block, unblock, pay-fast
    POST /demo/broker/restart
    anything else                   forwarded to the relay, with X-Forwarded-For/-Proto/-Host

The POSTs need the header `X-Demo-Control: 1`, which the page's script sends: a form on another site
cannot add it, so a page elsewhere on the network can't press the buttons through a visitor's browser.
Files: tools/lab/demo_web/ (template, script, style). None of this exists in production: the relay
never imports tools/, and `arcade relay` serves only the relay.
"""
import http.client
import io
from pathlib import Path
from urllib.parse import quote, urlsplit

from flask import Flask, abort, jsonify, redirect, render_template, request
from werkzeug.http import is_hop_by_hop_header

ASSETS = Path(__file__).resolve().parent / "demo_web"
MAX_FORWARD_BODY = 64 * 1024       # the relay's own pages take far less; webhooks go to it directly
ACTIONS = {
    "unplug": lambda d, c: d.unplug(c),
    "plug": lambda d, c: d.plug(c),
    "power-cut": lambda d, c: d.power_cut(c),
    "power-on": lambda d, c: d.power_on(c),
    "block": lambda d, c: d.block_coins(c, True),
    "unblock": lambda d, c: d.block_coins(c, False),
    "pay-fast": lambda d, c: d.pay_fast(c),
}


def create_app(demo):
    from tools.lab.fake_stripe import spaced
    from tools.lab.webdemo import CARD_NAMES, FAST_PAYMENTS, DemoError
    app = Flask(__name__, template_folder=str(ASSETS / "templates"), static_folder=str(ASSETS / "static"),
                static_url_path="/demo/static")

    @app.after_request
    def headers(resp):
        resp.headers.setdefault("Cache-Control", "no-store")
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                                   "script-src 'self'; frame-ancestors 'none'; base-uri 'none'")
        return resp

    @app.get("/")
    def root():
        return redirect("/demo", 303)

    @app.get("/demo")
    def page():
        cards = [(spaced(n), what) for n, what in CARD_NAMES.items()]
        return render_template("demo.html", cabinets=demo.cabinet_info(), cards=cards, fast=FAST_PAYMENTS,
                               url=demo.url)

    @app.get("/demo/state")
    def state():
        return jsonify(demo.state())

    @app.get("/demo/qr/<cab_id>.svg")
    def qr(cab_id):
        import segno
        if cab_id not in demo.cabinets:
            abort(404)
        out = io.BytesIO()
        segno.make(demo.pay_url(cab_id), error="m").save(out, kind="svg", scale=4, dark="#15131f", light="#ffffff")
        return app.response_class(out.getvalue(), mimetype="image/svg+xml")

    def control(fn):
        if request.headers.get("X-Demo-Control") != "1":
            return jsonify(ok=False, message="press the buttons on the demo page"), 403
        try:
            return jsonify(ok=True, message=fn())
        except DemoError as e:
            return jsonify(ok=False, message=str(e)), 409

    @app.post("/demo/cabinet/<cab_id>/<action>")
    def cabinet_action(cab_id, action):
        act = ACTIONS.get(action)
        if act is None:
            return jsonify(ok=False, message="no button %r: %s" % (action[:40], ", ".join(ACTIONS))), 404
        return control(lambda: act(demo, cab_id))

    @app.post("/demo/broker/restart")
    def broker_restart():
        return control(demo.restart_broker)

    return app


def front(demo, relay_url):
    """The one WSGI app on the demo's port: the demo page under /demo, everything else to the relay."""
    page = create_app(demo)
    target = urlsplit(relay_url)

    def forward(environ, start_response):
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_FORWARD_BODY:
            start_response("413 Request Entity Too Large", [("Content-Type", "text/plain")])
            return [b"too large\n"]
        body = environ["wsgi.input"].read(length) if length else None
        headers = {}
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                name = key[5:].replace("_", "-").title()
                if not is_hop_by_hop_header(name) and name.lower() not in ("host", "x-forwarded-for",
                                                                           "x-forwarded-proto", "x-forwarded-host"):
                    headers[name] = value
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        # what a reverse proxy in front of the relay sets; the relay trusts one hop (ARCADE_PROXY_HOPS=1)
        headers["X-Forwarded-For"] = environ.get("REMOTE_ADDR", "")
        headers["X-Forwarded-Proto"] = environ.get("wsgi.url_scheme", "http")
        headers["X-Forwarded-Host"] = environ.get("HTTP_HOST", "")
        path = environ.get("REQUEST_URI") or quote(environ.get("PATH_INFO", "/").encode("latin-1"), safe="/")
        if "REQUEST_URI" not in environ and environ.get("QUERY_STRING"):
            path += "?" + environ["QUERY_STRING"]
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        try:
            conn.request(environ["REQUEST_METHOD"], path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as e:
            start_response("502 Bad Gateway", [("Content-Type", "text/plain; charset=utf-8")])
            return [("the relay did not answer (%s): see its log\n" % e).encode()]
        finally:
            conn.close()
        start_response("%d %s" % (resp.status, resp.reason),
                       [(k, v) for k, v in resp.getheaders() if not is_hop_by_hop_header(k)])
        return [data]

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/" or path == "/demo" or path.startswith("/demo/"):
            return page(environ, start_response)
        return forward(environ, start_response)

    return app

