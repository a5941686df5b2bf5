# Atomic state file: fresh, round trip, corrupt kept aside, crash between remove and rename.
import os

from journal import Journal, fresh
from fwutil import exists, read_json, scratch


def test_missing_file_is_a_fresh_cabinet():
    root = scratch()
    j = Journal(root)
    assert j.load() == fresh() and j.note == "fresh"


def test_save_replaces_atomically_and_round_trips():
    root = scratch()
    j = Journal(root)
    s = fresh()
    s["ledger"], s["last"], s["recent"] = "ab" * 16, 3, ["cs_1"]
    j.save(s)
    s["last"] = 4
    j.save(s)
    assert not exists(root + "state.tmp"), "the temp file is renamed over state.json"
    assert read_json(root + "state.json")["last"] == 4
    j2 = Journal(root)
    assert j2.load() == s and j2.note == "loaded"


def test_corrupt_file_is_kept_and_reported():
    root = scratch()
    rows = [("truncated json", '{"v": 1, "ledger": "ab'), ("not an object", "[1, 2]"),
            ("wrong shape", '{"v": 1, "ledger": 5, "last": 0, "recent": [], "total": 0}'),
            ("cur without done", '{"v": 1, "ledger": "", "last": 0, "recent": [], "total": 0, '
                                 '"cur": {"seq": 1}}')]
    for name, text in rows:
        with open(root + "state.json", "w") as f:
            f.write(text)
        j = Journal(root)
        assert j.load() == fresh(), name
        assert "corrupt" in j.note and "state.bad" in j.note, name
        assert not exists(root + "state.json"), name
        with open(root + "state.bad") as f:
            assert f.read() == text, "a copy is kept: " + name
        os.remove(root + "state.bad")


def test_cut_between_remove_and_rename_uses_the_temp_file():
    root = scratch()
    j = Journal(root)
    s = fresh()
    s["last"] = 9
    j.save(s)
    os.rename(root + "state.json", root + "state.tmp")
    j2 = Journal(root)
    assert j2.load()["last"] == 9
