"""arcade: run the relay, manage cabinets and prices, simulate and provision boards.

Each subcommand is a short module in tools/ with a `main(argv)`; this file only dispatches.
"""
import importlib
import sys

# name -> (module, one-line help)
COMMANDS = {
    "relay": ("tools.commands.relay", "run the relay (webhook, dispatcher) under a production WSGI server"),
    "cabinet": ("tools.commands.cabinet", "add, list, enable/disable cabinets and set their prices"),
    "db": ("tools.commands.db", "create or upgrade the ledger's schema (SQLite file or PostgreSQL)"),
    "payments": ("tools.commands.payments", "list recent payments with their delivery state"),
    "refund": ("tools.commands.refund", "refund a payment through Stripe, only when its credit can never pulse"),
    "admin": ("tools.commands.admin", "operator accounts for the console (asks for passwords, never in argv)"),
    "console": ("tools.commands.console", "serve the operator's console (/admin) on a private port"),
    "reconcile": ("tools.commands.reconcile", "compare Stripe's paid sessions with the ledger, fulfil what was missed"),
    "simulate": ("tools.commands.simulate", "run the real firmware on this host with simulated pins"),
    "trigger": ("tools.commands.trigger", "send a correctly signed Stripe checkout event to a relay"),
    "qr": ("tools.commands.qr", "print QR stickers that open a cabinet's pay page (png, svg, pdf)"),
    "promo": ("tools.commands.promo", "add, list and remove promotions (happy hour bonus, percent off)"),
    "provision": ("tools.commands.provision", "write a cabinet's config.json and board profile for flashing"),
    "broker": ("tools.commands.broker", "write a mosquitto config: a login per cabinet, one for the relay, an ACL"),
    "flash": ("tools.commands.flash", "copy the firmware, umqtt.simple and a cabinet's config to a board (mpremote)"),
    "fake-stripe": ("tools.commands.fake_stripe", "run the fake Stripe API on loopback (demos, trying refunds and disputes)"),
    "demo": ("tools.commands.demo", "start mosquitto, the relay and a simulated cabinet, pay once, show the pulses; --web: try it in a browser"),
    "bench": ("tools.commands.bench", "benchmark the relay against the naive design on loopback (latency, rate, recovery)"),
    "init": ("tools.commands.init", "write a VPS's deployment kit: settings, broker, systemd units, Caddy/nginx"),
    "doctor": ("tools.commands.doctor", "check a deployment: each check ok, or what is wrong and how to fix it"),
    "backup": ("tools.commands.backup", "take a consistent copy of the database while the relay runs"),
    "restore": ("tools.commands.restore", "put a backup back (refuses a live database without --force)"),
    "ota": ("tools.commands.ota", "over-the-air firmware: build, check, push releases; per-cabinet status"),
    "soak": ("tools.commands.soak", "many payments under random faults (kills, broker loss, power cuts); the books must balance"),
}


def usage():
    lines = ["usage: arcade COMMAND [options]   (arcade COMMAND --help for more)", "", "commands:"]
    for name, (_, text) in COMMANDS.items():
        lines.append("  %-10s %s" % (name, text))
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print("arcade: unknown command %r\n\n%s" % (name, usage()), file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return module.main(rest) or 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
