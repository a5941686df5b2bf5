"""Over-the-air releases on the relay's side: load one that `arcade ota build` made and authenticate
its manifest for one cabinet (docs/protocol.md, Over-the-air updates). Not imported by the webhook,
ledger or dispatcher path."""
import hashlib
import hmac
import json
from pathlib import Path

MAX_MANIFEST = 4096


class ReleaseError(Exception):
    pass


def manifest_mac(secret, raw):
    """HMAC-SHA256 under the cabinet's secret over b"ota\\n" + the manifest's exact bytes (hex)."""
    return hmac.new(secret.encode("ascii"), b"ota\n" + raw, hashlib.sha256).hexdigest()


def load(release_dir):
    """(manifest bytes, manifest dict, {name: bytes}) of a built release, every file checked
    against the manifest. Raises ReleaseError saying what is wrong."""
    d = Path(release_dir)
    try:
        raw = (d / "manifest.json").read_bytes()
    except OSError as e:
        raise ReleaseError("%s: no manifest.json (%s): build one with `arcade ota build`" % (d, e.strerror or e))
    if len(raw) > MAX_MANIFEST:
        raise ReleaseError("%s: manifest.json is %d bytes, more than the firmware takes (%d)"
                           % (d, len(raw), MAX_MANIFEST))
    try:
        m = json.loads(raw)
        entries = [(f["name"], f["size"], f["sha256"]) for f in m["files"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ReleaseError("%s: manifest.json is malformed (%s)" % (d, e))
    files = {}
    for name, size, digest in entries:
        path = (d / "files" / name).resolve()
        if (d / "files").resolve() not in path.parents:
            raise ReleaseError("%s: file name %r leaves the release" % (d, name))
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ReleaseError("%s: %s is missing (%s)" % (d, name, e.strerror or e))
        if len(data) != size or not hmac.compare_digest(hashlib.sha256(data).hexdigest(), digest):
            raise ReleaseError("%s: %s does not match the manifest (size or sha256): rebuild the release"
                               % (d, name))
        files[name] = data
    return raw, m, files
