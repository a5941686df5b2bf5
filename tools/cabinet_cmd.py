"""arcade cabinet: register cabinets with their prices, list them, enable or disable them.

  arcade cabinet add ID --price 1.00 [--currency usd] [--bundle 3:2.50 ...] [--coins-per-credit N] [--name TEXT]
  arcade cabinet list [--json]
  arcade cabinet enable ID | disable ID
  arcade cabinet link ID plink_... [--url URL]   (Payment Links mode: sessions from that link credit ID)

The database is ARCADE_DB (environment or .env; default ./arcade.db) unless --db is given.
"""
import argparse
import json
import os
import sys
import time

from relay import pricing
from relay.config import db_path
from relay.ledger import LedgerError, StorageError, open_ledger, valid_cabinet_id


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
    created = not os.path.exists(args.db)
    try:
        with open_ledger(args.db) as ledger:
            secret = ledger.add_cabinet(args.id, name=args.name, currency=currency, price_cents=price,
                                        bundles=bundles, coins_per_credit=args.coins_per_credit)
            cab = ledger.get_cabinet(args.id)
            ledger_id = ledger.ledger_id
    except LedgerError as e:
        return _fail(str(e))
    if created:
        print("created the database %s (ledger %s)" % (args.db, ledger_id[:8]))
    print("cabinet %s (%s) added: %s; %d coin(s) per credit" % (cab["id"], cab["name"], _prices(cab),
                                                                 cab["coins_per_credit"]))
    print("its secret is shown only this once; it goes into the cabinet's config.json:")
    print("secret: %s" % secret)
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
        print("no cabinets in %s: add one with `arcade cabinet add ID --price 1.00`" % args.db)
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


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade cabinet", description="Manage cabinets and their prices.")
    p.add_argument("--db", default=None, help="ledger database (default: ARCADE_DB or ./arcade.db)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add = sub.add_parser("add", help="register a cabinet and print its secret once")
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
    args = p.parse_args(argv)
    args.db = args.db or db_path()
    if args.command != "add" and not os.path.exists(args.db):
        return _fail("no database at %s: set ARCADE_DB (or --db), or register a cabinet with `arcade cabinet add`"
                     % args.db)
    try:
        if args.command == "add":
            return cmd_add(args)
        if args.command == "list":
            return cmd_list(args)
        if args.command == "link":
            return cmd_link(args)
        return cmd_enable(args, args.command == "enable")
    except StorageError as e:
        return _fail("database %s: %s" % (args.db, e))
