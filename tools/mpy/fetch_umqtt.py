"""Fetch the pinned umqtt.simple sdist through pip's configured index and unpack it.

umqtt.simple 1.3.4 is an sdist with no setup.py, so pip cannot install it. We ask pip
which index it uses, download exactly that file, check its sha256 and extract it into
build/umqtt/ (ignored by git). What the tests run is what `arcade flash` copies.
"""
import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path

NAME = "micropython-umqtt.simple"
VERSION = "1.3.4"
SHA256 = "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f"
ROOT = Path(__file__).resolve().parents[2]
DEST = ROOT / "build" / "umqtt"


def pip_index_url():
    """The index pip is configured to use: its config or environment, else pip's own default."""
    url = os.environ.get("PIP_INDEX_URL")
    if url:
        return url
    out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                         capture_output=True, text=True)
    if out.returncode == 0 and out.stdout.strip():
        return out.stdout.strip()
    from pip._internal.models.index import PyPI  # pip's built-in default index
    return PyPI.simple_url


def find_file(index, opener=urllib.request.urlopen):
    project = index.rstrip("/") + "/" + NAME.replace(".", "-") + "/"
    req = urllib.request.Request(project, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with opener(req, timeout=60) as resp:
        listing = json.load(resp)
    want = "%s-%s.tar.gz" % (NAME, VERSION)
    for f in listing.get("files", []):
        if f["filename"] == want:
            return urllib.parse.urljoin(project, f["url"])
    raise SystemExit("fetch_umqtt: %s is not listed by the index %s" % (want, index))


def verify(data):
    got = hashlib.sha256(data).hexdigest()
    if got != SHA256:
        raise SystemExit("fetch_umqtt: sha256 mismatch for %s %s: got %s, expected %s. "
                         "Refusing to use it." % (NAME, VERSION, got, SHA256))


def extract(data, dest=DEST):
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("umqtt/simple.py")), None)
        if member is None:
            raise SystemExit("fetch_umqtt: the sdist has no umqtt/simple.py")
        src = tar.extractfile(member).read()
    (dest / "umqtt").mkdir(exist_ok=True)
    (dest / "umqtt" / "__init__.py").write_bytes(b"")
    (dest / "umqtt" / "simple.py").write_bytes(src)
    (dest / "SHA256").write_text(SHA256 + "\n")
    return dest / "umqtt" / "simple.py"


def is_present(dest=DEST):
    return (dest / "umqtt" / "simple.py").exists() and (dest / "SHA256").exists() \
        and (dest / "SHA256").read_text().strip() == SHA256


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--force", action="store_true", help="download again even if present")
    args = p.parse_args(argv)
    if is_present() and not args.force:
        print("umqtt.simple %s already in %s" % (VERSION, DEST))
        return 0
    index = pip_index_url()
    print("fetching %s %s through pip's index..." % (NAME, VERSION), flush=True)
    url = find_file(index)
    with urllib.request.urlopen(url, timeout=60) as resp:
        data = resp.read()
    verify(data)
    path = extract(data)
    print("umqtt.simple %s verified (sha256 %s...) -> %s" % (VERSION, SHA256[:12], path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
