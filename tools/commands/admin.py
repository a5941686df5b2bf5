"""arcade admin: operator accounts for the console (/admin).

The password is read from the terminal without echo (or one line from standard input when it is
not a terminal, e.g. `printf '%s\\n' "$PW" | arcade admin add alice`), never from the command line,
where other users could read it in the process list.
"""
import argparse
import getpass
import sys
import time

from relay.config import db_path
from relay.console import auth
from relay.ledger import LedgerError, open_ledger


def _fail(message):
    print("arcade admin: %s" % message, file=sys.stderr)
    return 2


def _read_password(confirm):
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    first = getpass.getpass("Password (at least %d characters): " % auth.MIN_PASSWORD)
    if confirm and getpass.getpass("Again: ") != first:
        raise auth.PasswordRefused("the two passwords differ")
    return first


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade admin", description="Operator accounts for the console. Passwords are "
                                "asked on the terminal (or read as one line from standard input), never taken "
                                "from the command line.")
    p.add_argument("--db", default=None, help="ledger database (default: ARCADE_DB)")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, text in (("add", "add an operator (asks for the password)"),
                       ("passwd", "set an operator's password (signs out their sessions)"),
                       ("remove", "remove an operator (signs out their sessions)")):
        s = sub.add_parser(name, help=text)
        s.add_argument("name")
    sub.add_parser("list", help="list operators and their last sign-in")
    args = p.parse_args(argv)
    db = args.db or db_path()
    with open_ledger(db) as ledger:
        if args.cmd == "list":
            ops = ledger.list_operators()
            for op in ops:
                print("%-20s last sign-in %s" % (op["name"], time.strftime("%Y-%m-%d %H:%M", time.localtime(
                    op["last_login"])) if op["last_login"] else "never"))
            if not ops:
                print("no operators yet: arcade admin add NAME")
            return 0
        if args.cmd == "remove":
            try:
                ledger.remove_operator(args.name)
            except LedgerError as e:
                return _fail(str(e))
            ledger.audit("cli", "operator.remove", args.name)
            print("operator %s removed" % args.name)
            return 0
        if args.cmd == "add" and ledger.get_operator(args.name) is not None:
            return _fail("operator %r already exists: `arcade admin passwd %s` to change the password"
                         % (args.name, args.name))
        try:
            pw_hash = auth.hash_password(_read_password(confirm=True))
        except auth.PasswordRefused as e:
            return _fail("%s; nothing changed" % e)
        except (EOFError, KeyboardInterrupt):
            return _fail("no password given; nothing changed")
        try:
            if args.cmd == "add":
                ledger.add_operator(args.name, pw_hash)
            else:
                ledger.set_operator_hash(args.name, pw_hash)
        except LedgerError as e:
            return _fail(str(e))
        ledger.audit("cli", "operator." + args.cmd, args.name)
    print("operator %s %s: sign in at /admin (`arcade console` serves it)"
          % (args.name, "added" if args.cmd == "add" else "has a new password"))
    return 0
