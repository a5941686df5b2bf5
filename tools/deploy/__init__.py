"""Deployment: what `arcade init`, `arcade doctor`, `arcade backup`/`restore` and `arcade db` do on a
VPS (docs/deploy.md). Imports relay/ only; the commands stay thin."""
from collections import namedtuple

# A file of the kit: its text, mode, owner role ("root", "user" = the relay's user, "broker" = the
# broker's user) and whether it holds a secret (never rewritten once there).
File = namedtuple("File", "content mode owner secret")
