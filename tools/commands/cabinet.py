"""arcade cabinet: register cabinets with their prices, list them, enable or disable them.

  arcade cabinet add ID --price 1.00 [--currency usd] [--bundle 3:2.50 ...] [--coins-per-credit N] [--name TEXT]
  arcade cabinet list [--json]
  arcade cabinet enable ID | disable ID
  arcade cabinet link ID plink_... [--url URL]   (Payment Links mode: sessions from that link credit ID)
  arcade cabinet set ID [--pulse-ms MS] [--gap-ms MS] [--coins-per-credit N]   (no option: show)
  arcade cabinet price ID [--price 1.50] [--bundle 3:2.50 ... | --no-bundles] [--name TEXT]
  arcade cabinet test-pulse ID [--pulses N] [--wait S]

The database is ARCADE_DB (environment or .env; default ./arcade.db) unless --db is given.
"""
import argparse
import json
import os
import sys
import time

from relay import pricing, screenlines
from relay.config import db_path
from relay.backends import redact
from relay.ledger import LedgerError, StorageError, ledger_exists, open_ledger, valid_cabinet_id


def _fail(message):
    print("arcade cabinet: %s" % message, file=sys.stderr)
    return 2


def _ago(ts, now=None):
    if not ts:
        return "never"
    seconds = max(0, int((now or time.time()) - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return "%d%s ago" % (seconds // size, unit)
    return "%ds ago" % seconds


def _prices(cab):
    cur = cab["currency"]
    parts = ["1 for %s" % pricing.format_price(cab["price_cents"], cur)]
    parts += ["%d for %s" % (credits, pricing.format_price(cents, cur)) for credits, cents in cab["bundles"]]
    return ", ".join(parts)


def cmd_add(args):
    if not valid_cabinet_id(args.id):
        return _fail("cabinet id %r is not valid: use 1 to 32 letters, digits, '-' or '_' (e.g. galaga-1)" % args.id)
    currency = args.currency.lower()
    if len(currency) != 3 or not currency.isalpha() or not currency.isascii():
        return _fail("--currency %r is not a 3-letter ISO code like usd, eur or gbp" % args.currency)
    try:
        price = pricing.parse_price(args.price, currency)
        bundles = [pricing.parse_bundle(b, currency) for b in args.bundle]
    except ValueError as e:
        return _fail(str(e))
    if not 1 <= args.coins_per_credit <= 255:
        return _fail("--coins-per-credit %d must be from 1 to 255" % args.coins_per_credit)
    try:
        with open_ledger(args.db) as ledger:
            secret = ledger.add_cabinet(args.id, name=args.name, currency=currency, price_cents=price,
                                        bundles=bundles, coins_per_credit=args.coins_per_credit)
            cab = ledger.get_cabinet(args.id)
            ledger_id = ledger.ledger_id
            created = ledger.created_now
    except LedgerError as e:
        return _fail(str(e))
    if created:
        print("created the database %s (ledger %s)" % (redact(args.db), ledger_id[:8]))
    print("cabinet %s (%s) added: %s; %d coin(s) per credit" % (cab["id"], cab["name"], _prices(cab),
                                                                 cab["coins_per_credit"]))
    if args.show_secret:
        print("its secret (for a board you set up by hand; `arcade provision` reads it from the database):")
        print("secret: %s" % secret)
    else:
        print("its secret is in the database, for `arcade provision %s` (--show-secret prints it)" % cab["id"])
    return 0


def cmd_list(args):
    with open_ledger(args.db) as ledger:
        cabinets = ledger.list_cabinets()
    if args.json:
        for cab in cabinets:
            cab.pop("secret")
        print(json.dumps(cabinets, indent=2))
        return 0
    if not cabinets:
        print("no cabinets in %s: add one with `arcade cabinet add ID --price 1.00`" % redact(args.db))
        return 0
    now = time.time()
    rows = [("ID", "NAME", "ENABLED", "ONLINE", "LAST SEEN", "PENDING", "COINS", "PRICES")]
    for c in cabinets:
        rows.append((c["id"], c["name"], "yes" if c["enabled"] else "no", "online" if c["online"] else "offline",
                     _ago(c["last_seen"], now), str(c["pending"]), str(c["coins_per_credit"]), _prices(c)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])
    return 0


def cmd_enable(args, enabled):
    try:
        with open_ledger(args.db) as ledger:
            ledger.set_enabled(args.id, enabled)
    except LedgerError as e:
        return _fail(str(e))
    print("cabinet %s %s" % (args.id, "enabled" if enabled else "disabled: its payments are refused (recorded "
                                                                 "as invalid, no credit)"))
    return 0


def cmd_link(args):
    """Payment Links mode (issue 5): sessions from this link credit this cabinet unless their metadata
    or client_reference_id name another."""
    try:
        with open_ledger(args.db) as ledger:
            ledger.link_payment_link(args.link_id, args.id, args.url)
    except LedgerError as e:
        return _fail(str(e))
    print("payment link %s now credits cabinet %s" % (args.link_id, args.id))
    return 0


def _timing_ranges(board):
    """{"pulse_ms": (lo, hi, default), "gap_ms": ...} from the cabinet's board profile (recorded by
    `arcade provision`), else the firmware's defaults for a profile without ranges."""
    from tools.hostsim.boards import ProvisionError, fw_config, load_profile
    profile = None
    if board:
        try:
            profile = load_profile(board)
        except ProvisionError:
            profile = None
    if profile is None:
        profile = fw_config().check_board({"name": "?", "chip": "esp32", "coin_pin": 25})
    return profile, {"pulse_ms": tuple(profile["width_ms_range"]) + (profile["width_ms"],),
                     "gap_ms": tuple(profile["gap_ms_range"]) + (profile["gap_ms"],)}


def _ms(value, default):
    return "%d ms" % value if value else "board default (%d ms)" % default


def cmd_set(args):
    """Per-cabinet pulse timing (issue 4): stored in the ledger with a new config version; the relay's
    dispatcher publishes it signed and retained on <prefix>/<ID>/config (docs/protocol.md, Config)."""
    prefix = os.environ.get("ARCADE_TOPIC_PREFIX") or "arcade"
    with open_ledger(args.db) as ledger:
        cfg = ledger.cabinet_config(args.id)
        if cfg is None:
            return _fail("no cabinet %r: see `arcade cabinet list`" % (args.id,))
        status = (ledger.get_cabinet(args.id) or {}).get("status") or {}
        profile, ranges = _timing_ranges(cfg["board"])
        whose = ("the board %s" % cfg["board"]) if cfg["board"] and profile["name"] == cfg["board"] else \
            "the firmware's default ranges (board unknown: `arcade provision` records it)"
        changes = {"pulse_ms": args.pulse_ms, "gap_ms": args.gap_ms}
        for key, flag in (("pulse_ms", "--pulse-ms"), ("gap_ms", "--gap-ms")):
            value = changes[key]
            lo, hi, default = ranges[key]
            if value is not None and value != 0 and not lo <= value <= hi:
                return _fail("%s %d is outside %d..%d ms allowed by %s; 0 means the board's default (%d ms). "
                             "Nothing changed." % (flag, value, lo, hi, whose, default))
            if value is not None and value < 0:
                return _fail("%s %d must be 0 (board default) or %d..%d ms. Nothing changed." % (flag, value, lo, hi))
        if args.coins_per_credit is not None and not 1 <= args.coins_per_credit <= 255:
            return _fail("--coins-per-credit %d must be from 1 to 255. Nothing changed." % args.coins_per_credit)
        if args.pulse_ms is None and args.gap_ms is None and args.coins_per_credit is None:
            state = "none issued" if not cfg["ver"] else "ver %d, %s" % (
                cfg["ver"], "on the broker" if cfg["published_ver"] >= cfg["ver"] else "waiting for the relay to publish")
            print("cabinet %s: pulse %s, gap %s, %d coin(s) per credit; config %s"
                  % (args.id, _ms(cfg["pulse_ms"], ranges["pulse_ms"][2]), _ms(cfg["gap_ms"], ranges["gap_ms"][2]),
                     cfg["cabinet_coins"], state))
            if "cfg" in status:
                applied = "applied" if cfg["ver"] and status["cfg"] == cfg["ver"] else "not this version yet"
                print("the cabinet reports config %s in effect (pulse %s ms, gap %s ms): %s%s"
                      % (status["cfg"], status.get("width_ms"), status.get("gap_ms"), applied,
                         "; refused: %s" % status["cfg_error"] if status.get("cfg_error") else ""))
            return 0
        try:
            # the screen's lines first (relay/screenlines.py): the version issued below then carries them
            screenlines.refresh(ledger, os.environ.get("ARCADE_TZ") or "UTC")
            cfg = ledger.set_cabinet_config(args.id, args.pulse_ms, args.gap_ms, args.coins_per_credit)
        except LedgerError as e:
            return _fail("%s. Nothing changed." % e)
    print("cabinet %s: pulse %s, gap %s, %d coin(s) per credit (checked against %s)"
          % (args.id, _ms(cfg["pulse_ms"], ranges["pulse_ms"][2]), _ms(cfg["gap_ms"], ranges["gap_ms"][2]),
             cfg["coins_per_credit"], whose))
    print("config version %d stored: the relay publishes it signed and retained on %s/%s/config, and the cabinet "
          "applies it without a re-flash; `arcade cabinet set %s` shows whether it did"
          % (cfg["ver"], prefix, args.id, args.id))
    return 0


def cmd_price(args):
    """Change a cabinet's price, bundles or name. A cabinet with a screen shows the new price line once
    the relay has published the config version issued here (relay/screenlines.py)."""
    if args.price is None and not args.bundle and not args.no_bundles and args.name is None:
        return _fail("say what to change: --price, --bundle (repeatable), --no-bundles or --name")
    if args.bundle and args.no_bundles:
        return _fail("--bundle and --no-bundles contradict each other. Nothing changed.")
    with open_ledger(args.db) as ledger:
        cab = ledger.get_cabinet(args.id)
        if cab is None:
            return _fail("no cabinet %r: see `arcade cabinet list`" % (args.id,))
        try:
            price = None if args.price is None else pricing.parse_price(args.price, cab["currency"])
            bundles = [] if args.no_bundles else ([pricing.parse_bundle(b, cab["currency"]) for b in args.bundle]
                                                  if args.bundle else None)
            ledger.set_prices(args.id, name=args.name, price_cents=price, bundles=bundles)
        except (ValueError, LedgerError) as e:
            return _fail("%s. Nothing changed." % e)
        changed = screenlines.refresh(ledger, os.environ.get("ARCADE_TZ") or "UTC")
        cab = ledger.get_cabinet(args.id)
    print("cabinet %s (%s): %s" % (cab["id"], cab["name"], _prices(cab)))
    if args.id in changed:
        ver, line, promo = changed[args.id]
        print("its screen will say %r%s: config version %d, published by the relay" %
              (line, " / %r" % promo if promo else "", ver))
    return 0


def cmd_test_pulse(args):
    """Publish a signed test pulse (docs/protocol.md, Test pulse) and wait for the cabinet's status to
    report it driven or refused. Refuses when the cabinet is not online: the broker would hold the
    message and the cabinet would put coins in whenever it reconnects."""
    import threading

    from relay import config, protocol
    from relay.config import ConfigError, mask_url
    from relay.testpulse import connect_any, make_client

    if not 1 <= args.pulses <= 10:
        return _fail("--pulses %d must be from 1 to 10" % args.pulses)
    try:
        settings = config.load(require_webhook_secret=False)
    except ConfigError as e:
        return _fail(str(e))
    prefix, url = settings["ARCADE_TOPIC_PREFIX"], settings["MQTT_URL"]
    with open_ledger(args.db) as ledger:
        cab = ledger.get_cabinet(args.id)
        if cab is None:
            return _fail("no cabinet %r: see `arcade cabinet list`" % (args.id,))
        secret = cab["secret"]
        cond = threading.Condition()
        seen = {"status": None, "retained": None, "suback": False, "puback": False, "connected": None}

        def on_connect(client, userdata, flags, reason_code, properties):
            with cond:
                seen["connected"] = not reason_code.is_failure
                cond.notify_all()

        def on_subscribe(client, userdata, mid, reason_codes, properties):
            with cond:
                seen["suback"] = True
                cond.notify_all()

        def on_publish(client, userdata, mid, reason_code, properties):
            with cond:
                seen["puback"] = True
                cond.notify_all()

        def on_message(client, userdata, msg):
            try:
                status = json.loads(msg.payload)
            except ValueError:
                return
            if isinstance(status, dict):
                with cond:
                    seen["status"] = status
                    if msg.retain and seen["retained"] is None:
                        seen["retained"] = status
                    cond.notify_all()

        client, _ = make_client(url, "test-pulse")
        client.on_connect, client.on_subscribe = on_connect, on_subscribe
        client.on_publish, client.on_message = on_publish, on_message
        topic = "%s/%s/" % (prefix, args.id)
        try:
            connect_any(client, url)     # each broker of the list in turn
        except OSError as e:
            return _fail("cannot reach the broker %s: %s" % (mask_url(url), e))
        client.loop_start()
        try:
            with cond:
                if not cond.wait_for(lambda: seen["connected"] is not None, 10) or not seen["connected"]:
                    return _fail("the broker %s did not accept the connection" % mask_url(url))
            client.subscribe(topic + "status", qos=1)
            with cond:
                cond.wait_for(lambda: seen["suback"], 10)
                # the broker sends the retained status right after the subscription
                cond.wait_for(lambda: seen["retained"] is not None, 2)
                last = seen["retained"]
            if not last or last.get("online") is not True:
                return _fail("cabinet %s is not online (%s): a test pulse would wait at the broker and put a coin in "
                             "whenever the cabinet reconnects. Check `arcade cabinet list`, then try again."
                             % (args.id, "no status on %sstatus" % topic if not last else "its status says offline"))
            n = ledger.next_test_n(args.id)
            client.publish(topic + "test", protocol.build_test(args.id, n, args.pulses, secret), qos=1)
            prefix_err = "%d " % n
            with cond:
                if not cond.wait_for(lambda: seen["puback"], 10):
                    return _fail("the broker %s did not acknowledge the test pulse" % mask_url(url))
                print("test pulse %d (%d pulse%s) sent to %s; waiting up to %d s for its status..."
                      % (n, args.pulses, "" if args.pulses == 1 else "s", args.id, args.wait), flush=True)
                done = cond.wait_for(lambda: seen["status"] is not None and (
                    seen["status"].get("test") == n or str(seen["status"].get("test_error", "")).startswith(prefix_err)),
                    args.wait)
                status = seen["status"]
        finally:
            client.disconnect()
            client.loop_stop()
    if not done:
        print("arcade cabinet: no status from %s reporting test pulse %d within %d s: older firmware without test "
              "pulses, or it is busy; check the coin line and `arcade cabinet list`" % (args.id, n, args.wait),
              file=sys.stderr)
        return 1
    if status.get("test") == n and not str(status.get("test_error", "")).startswith(prefix_err):
        print("cabinet %s drove test pulse %d: %d pulse%s of %s ms (gap %s ms); the game should show %s"
              % (args.id, n, args.pulses, "" if args.pulses == 1 else "s", status.get("width_ms", "?"),
                 status.get("gap_ms", "?"), "a coin" if args.pulses == 1 else "%d coins" % args.pulses))
        return 0
    reason = status["test_error"][len(prefix_err):]
    hint = {"inhibited": "the game's inhibit line says it takes no coins now",
            "busy": "a credit is being held or pulsed; try again in a moment",
            "bad_signature": "the cabinet's secret differs from the relay's: provision and flash it again"}
    print("arcade cabinet: %s refused test pulse %d: %s%s" % (args.id, n, reason,
                                                              " (%s)" % hint[reason] if reason in hint else ""),
          file=sys.stderr)
    return 1


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade cabinet", description="Manage cabinets and their prices.")
    p.add_argument("--db", default=None, help="ledger database (default: ARCADE_DB or ./arcade.db)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add = sub.add_parser("add", help="register a cabinet (its secret stays in the database)")
    add.add_argument("--show-secret", action="store_true",
                     help="print the new secret (it is a credential: terminals and logs keep it)")
    add.add_argument("id", metavar="ID", help="cabinet id: 1-32 letters, digits, - or _")
    add.add_argument("--price", required=True, help="price of one credit, e.g. 1.00")
    add.add_argument("--currency", default="usd", help="ISO currency (default %(default)s)")
    add.add_argument("--bundle", action="append", default=[], metavar="CREDITS:PRICE",
                     help="a multi-play price, e.g. 3:2.50 (repeatable)")
    add.add_argument("--coins-per-credit", type=int, default=1, metavar="N",
                     help="coin pulses per credit (default %(default)s)")
    add.add_argument("--name", help="a display name (default: the id)")
    ls = sub.add_parser("list", help="cabinets with online status, last seen and pending credits")
    ls.add_argument("--json", action="store_true", help="JSON instead of a table (secrets left out)")
    for name in ("enable", "disable"):
        sp = sub.add_parser(name, help="%s taking payments" % ("resume" if name == "enable" else "stop"))
        sp.add_argument("id", metavar="ID")
    lk = sub.add_parser("link", help="map a Stripe Payment Link (plink_...) to a cabinet")
    lk.add_argument("id", metavar="ID")
    lk.add_argument("link_id", metavar="PLINK", help="the Payment Link id from Stripe's dashboard, plink_...")
    lk.add_argument("--url", default="", help="the link's address, offered on the pay page when no API key is set")
    st = sub.add_parser("set", help="per-cabinet pulse timing and coins per credit, sent to the cabinet as a "
                                    "signed retained config (no option: show the current one)")
    st.add_argument("id", metavar="ID")
    st.add_argument("--pulse-ms", type=int, metavar="MS", help="coin pulse width in ms (0: the board's default)")
    st.add_argument("--gap-ms", type=int, metavar="MS", help="minimum gap between pulses in ms (0: the board's default)")
    st.add_argument("--coins-per-credit", type=int, metavar="N", help="coin pulses per credit bought (1-255)")
    pr = sub.add_parser("price", help="change a cabinet's price, bundles or name (its screen follows)")
    pr.add_argument("id", metavar="ID")
    pr.add_argument("--price", help="price of one credit, e.g. 1.50")
    pr.add_argument("--bundle", action="append", default=[], metavar="CREDITS:PRICE",
                    help="a multi-play price, e.g. 3:2.50 (repeatable; replaces the bundles)")
    pr.add_argument("--no-bundles", action="store_true", help="remove every bundle")
    pr.add_argument("--name", help="a new display name")
    tp = sub.add_parser("test-pulse", help="make the cabinet pulse its coin line now (bring-up check)")
    tp.add_argument("id", metavar="ID")
    tp.add_argument("--pulses", type=int, default=1, metavar="N", help="pulses, 1-10 (default %(default)s)")
    tp.add_argument("--wait", type=float, default=15, metavar="S",
                    help="seconds to wait for the cabinet's report (default %(default)s)")
    args = p.parse_args(argv)
    args.db = args.db or db_path()
    if args.command != "add" and not ledger_exists(args.db):
        return _fail("no database at %s: set ARCADE_DB (or --db), or register a cabinet with `arcade cabinet add`"
                     % redact(args.db))
    try:
        if args.command == "add":
            return cmd_add(args)
        if args.command == "list":
            return cmd_list(args)
        if args.command == "link":
            return cmd_link(args)
        if args.command == "set":
            return cmd_set(args)
        if args.command == "price":
            return cmd_price(args)
        if args.command == "test-pulse":
            return cmd_test_pulse(args)
        return cmd_enable(args, args.command == "enable")
    except StorageError as e:
        return _fail("database %s: %s" % (redact(args.db), e))
