"""Every bad input is refused the same way: exit code 2, no traceback, a message naming the culprit
(file, key, value), and not one file created or changed anywhere (the finished project beside it
included). Cases live in `cases.py`, by kind."""

from __future__ import annotations

import pytest

from tests.hostile.cases import CASES
from tests.hostile.conftest import diff, run_cli, snapshot


@pytest.mark.parametrize("name", sorted(CASES))
def test_refused_cleanly(name, world, tmp_path, capsys, monkeypatch):
    _, make = CASES[name]
    scratch = tmp_path / "case"
    scratch.mkdir()
    monkeypatch.chdir(scratch)  # anything written relative to the working directory is seen too
    argv, fragments = make(world, scratch)
    before = snapshot(world.root, scratch)
    code, out, err = run_cli(argv, capsys)
    changes = diff(before, snapshot(world.root, scratch))
    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in err and "Traceback" not in out, err
    low = " ".join(err.split()).lower()
    missing = [f for f in fragments if " ".join(str(f).split()).lower() not in low]
    assert not missing, f"message does not name {missing}:\n{err}"
    assert not changes, f"the refusal changed files: {changes}\n{err}"
