"""ARCADE_LOG_FORMAT=json: one JSON object a line on stderr, tracebacks included; a wrong value is refused."""
import json
import logging

import pytest

from relay import logs


@pytest.fixture(autouse=True)
def restore_root():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines(capsys):
    assert logs.setup("INFO", environ={"ARCADE_LOG_FORMAT": "json"}) == "json"
    log = logging.getLogger("arcade.test")
    log.info("cabinet %s online", "cab1")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed: %s", "x\ny")
    log.debug("not shown")
    lines = capsys.readouterr().err.strip().split("\n")
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert (first["level"], first["logger"], first["msg"]) == ("INFO", "arcade.test", "cabinet cab1 online")
    assert second["msg"] == "failed: x\ny" and "RuntimeError: boom" in second["exc"]


def test_text_by_default_and_a_wrong_value_refused(capsys):
    assert logs.setup("INFO", environ={}) == "text"
    logging.getLogger("arcade.test").warning("plain")
    assert "WARNING arcade.test: plain" in capsys.readouterr().err
    with pytest.raises(ValueError, match="text .* or json"):
        logs.setup("INFO", environ={"ARCADE_LOG_FORMAT": "xml"})
