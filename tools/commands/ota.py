"""arcade ota: over-the-air firmware releases.

  arcade ota build [--out DIR]     compile the firmware (.mpy), add the pinned umqtt.simple and write
                                   DIR/<version>/manifest.json + files/ (default build/ota)
  arcade ota show DIR              check a built release against its manifest and print it
"""
import argparse
import json
import sys

from relay import ota as relay_ota
from tools.mpy import build as mpy_build
from tools.mpy import release


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade ota", description=__doc__.strip().splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build a release from firmware/ and the pinned umqtt.simple")
    b.add_argument("--out", default=str(release.OUT), help="releases folder (default %(default)s)")
    s = sub.add_parser("show", help="check a built release and print its manifest")
    s.add_argument("dir", help="the release folder, e.g. build/ota/0.2.0")
    args = p.parse_args(argv)
    if args.cmd == "build":
        try:
            release.build(args.out)
        except (release.ReleaseError, mpy_build.BuildError) as e:
            print("arcade ota build: %s" % e, file=sys.stderr)
            return 1
        return 0
    try:
        raw, m, files = relay_ota.load(args.dir)
    except relay_ota.ReleaseError as e:
        print("arcade ota show: %s" % e, file=sys.stderr)
        return 1
    print("release %s for %s, MicroPython >= %s: %d files, %d bytes, every hash checked"
          % (m["version"], ", ".join(m["chips"]), m["min_micropython"], len(files), sum(map(len, files.values()))))
    for f in m["files"]:
        print("  %-20s %7d B  %s" % (f["name"], f["size"], f["sha256"][:16]))
    print(json.dumps({"manifest_bytes": len(raw)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
