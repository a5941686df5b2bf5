"""Start a private mosquitto, the relay and one simulated cabinet, pay once, show the pulses.

Everything runs on loopback on free ports and stops at the end; the logs stay in --dir.

--web keeps it running instead, with two cabinets, the fake Stripe's checkout page (Stripe's test
cards) and a demo page to watch the coin lines and break things, until Ctrl-C (tools/lab/webdemo.py).
"""
import argparse
import secrets
import shutil
import sys
import time
from pathlib import Path

from tools.lab import stack
from tools.lab import trigger
from tools.lab.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[2]


def say(msg):
    print(msg, flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade demo", description=__doc__.strip().splitlines()[0])
    p.add_argument("--dir", help="work folder for logs, database and flash (emptied first; default build/demo, "
                                 "with --web build/demo-web)")
    p.add_argument("--amount", type=int, default=250, help="amount paid in cents (default 250 = the 3-play bundle)")
    p.add_argument("--web", action="store_true",
                   help="stay up with a demo page, two cabinets and the fake Stripe's checkout until Ctrl-C")
    p.add_argument("--port", type=int, default=8080, help="with --web: the page's port (default %(default)s; 0 = any free)")
    p.add_argument("--host", default="127.0.0.1",
                   help="with --web: address to listen on (default %(default)s; 0.0.0.0 for a phone on your network)")
    args = p.parse_args(argv)
    if args.web:
        return web(args)
    args.dir = args.dir or str(ROOT / "build" / "demo")

    from relay.ledger import open_ledger

    work = Path(args.dir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    webhook_secret = "whsec_demo_" + secrets.token_hex(16)
    db_path = work / "arcade.db"
    cab_id = "demo-1"

    ledger = open_ledger(str(db_path))
    cab_secret = ledger.add_cabinet(cab_id, name="Demo Pac-Cab", currency="usd", price_cents=100,
                                    bundles=[(3, 250)], coins_per_credit=2)
    logins = ledger.broker_logins()
    ledger.close()
    say("1/5 cabinet %s registered: 1 play $1.00, 3 plays $2.50, 2 coins per play" % cab_id)

    # the configuration `arcade broker config` writes: the relay and the cabinet each log in as
    # themselves, and the ACL keeps each to its own topics
    broker = Mosquitto(work / "mosquitto", logins=logins)
    relay = cabinet = None
    started = time.monotonic()
    try:
        broker.start()
        say("2/5 mosquitto listening on %s (no anonymous access: a login per cabinet, one for the relay, "
            "an ACL; %s)" % (broker.url, broker.conf_path))
        relay = stack.Relay(work, str(db_path), broker.relay_url, webhook_secret).start()
        say("3/5 relay listening on %s, on the broker as %s" % (relay.url, logins["relay"][0]))
        cabinet = stack.Cabinet(work, cab_id, cab_secret, broker.cabinet_url(cab_id)).start()
        cabinet.wait_connected(timeout=30)
        say("4/5 simulated cabinet %s online as broker user %s (firmware from firmware/, flash in %s)"
            % (cab_id, cab_id, cabinet.state_dir))
        stack.wait_until(lambda: relay.health().get("broker") == "ok", 20, what="relay connected to the broker")

        session_id, event_id, statuses = trigger.send(relay.webhook_url, webhook_secret, cab_id, args.amount)
        say("5/5 paid %d cents: webhook %s answered %s (session %s)"
            % (args.amount, event_id, statuses[0][0], session_id))
        if statuses[0][0] != 200:
            say("the relay refused the payment: %s" % statuses[0][1])
            return 1

        ledger = open_ledger(str(db_path))
        try:
            payment = stack.wait_until(lambda: ledger.get_payment(session_id), 10, what="payment recorded")
            expected = payment["pulses"]
            say("   relay recorded it: %d credit(s) -> %d coin pulse(s), seq %s" % (payment["credits"], expected, payment["seq"]))
            shown = 0
            deadline = time.monotonic() + 60
            while shown < expected and time.monotonic() < deadline:
                pulses = cabinet.wait_pulses(shown + 1, timeout=max(1, deadline - time.monotonic()))
                for pl in pulses[shown:]:
                    say("   coin pulse %d/%d: %s ms low->high->low on the coin line"
                        % (pl.get("n", shown + 1), expected, pl.get("width_ms")))
                shown = len(pulses)
            done = stack.wait_until(lambda: (ledger.get_payment(session_id) or {}).get("state")
                                    in ("applied", "duplicate", "rejected") and ledger.get_payment(session_id),
                                    20, what="the cabinet's ack")
            acks = cabinet.events("ack")
            if acks:
                say("   cabinet acked seq %s: %s" % (acks[-1].get("seq"), acks[-1].get("result")))
            say("   ledger: payment %s is %s after %.1f s" % (session_id, done["state"], time.monotonic() - started))
        finally:
            ledger.close()
        ok = done["state"] == "applied" and shown == expected
        say("demo %s. logs: relay %s, cabinet %s, mosquitto %s; database %s"
            % ("OK" if ok else "FAILED", relay.log_path, cabinet.log_path, broker.log_path, db_path))
        return 0 if ok else 1
    except (TimeoutError, RuntimeError) as e:
        say("demo FAILED: %s" % e)
        say("logs are in %s" % work)
        return 1
    finally:
        for proc in (cabinet, relay):
            if proc is not None:
                proc.stop()
        broker.stop()


def web(args):
    from tools.lab import webdemo
    if not 0 <= args.port <= 65535:
        say("arcade demo: --port %d is not a port number (1-65535, or 0 for any free port)" % args.port)
        return 2
    demo = webdemo.WebDemo(Path(args.dir or ROOT / "build" / "demo-web"), host=args.host, port=args.port)
    if not demo.port_free():
        say("arcade demo: cannot listen on %s:%d: it is in use (is another demo running? try --port 0)"
            % (args.host, demo.port))
        return 2
    return webdemo.run(demo, say)


if __name__ == "__main__":
    sys.exit(main())
