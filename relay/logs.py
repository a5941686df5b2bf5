"""Logging set-up for the relay's processes: plain lines, or JSON lines with ARCADE_LOG_FORMAT=json
(one object a line: ts, level, logger, msg, and exc when there is a traceback) for log shippers."""
import json
import logging
import os
import sys
import time

PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLines(logging.Formatter):
    def format(self, record):
        out = {"ts": round(record.created, 3), "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
               "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup(level="INFO", environ=None):
    """Configure the root logger on stderr. Raises ValueError for an unknown ARCADE_LOG_FORMAT."""
    env = os.environ if environ is None else environ
    kind = env.get("ARCADE_LOG_FORMAT")
    if kind is None and environ is None and os.path.exists(".env"):
        from dotenv import dotenv_values
        kind = dotenv_values(".env").get("ARCADE_LOG_FORMAT")
    kind = (kind or "text").strip().lower()
    if kind not in ("text", "json"):
        raise ValueError("ARCADE_LOG_FORMAT=%r: use text (default) or json" % kind)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if kind == "json" else logging.Formatter(PLAIN))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return kind
