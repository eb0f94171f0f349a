"""Command-line mistakes end in one line naming the problem (exit 2), never a traceback, never a side effect."""

from __future__ import annotations

from pathlib import Path

import pytest

from avminer.catalog.catalog import open_catalog
from avminer.cli.main import main


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = tmp_path / "c.db"
    open_catalog(f"sqlite:///{path}").close()
    return str(path)


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:  # argparse's usage errors exit 2 themselves
        rc = main(argv)
        raise SystemExit(rc)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(("avminer: error:", "avminer ")) and "error" in last
    return last


def test_a_mistyped_sqlite_path_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "typo" / "dir" / "catalog.db"
    assert "no catalog at" in one_line_error(capsys, ["catalog", "--catalog", f"sqlite:///{typo}", "stats"])
    assert not (tmp_path / "typo").exists()


def test_a_file_that_is_not_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    assert "not a usable SQLite catalog" in one_line_error(capsys, ["catalog", "--catalog", str(junk), "stats"])


def test_catalog_password_is_never_printed(capsys: pytest.CaptureFixture[str]) -> None:
    last = one_line_error(capsys, ["catalog", "--catalog", "postgresql://u:hunter2@127.0.0.1:1/x", "stats"])
    assert "hunter2" not in last and "u:***@" in last


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["catalog", "--catalog", "{db}", "mined", "--since", "1e23"], "not a time"),
        (["catalog", "--catalog", "{db}", "mined", "--limit", "-5"], "--limit"),
        (["catalog", "--catalog", "{db}", "serve", "--port", "99999"], "--port"),
        (["export", "cvat", "--catalog", "{db}", "--out", "/proc/x"], "/proc/x"),
        (["engine", "verify", "--batch", "-1"], "--batch"),
        (["catalog", "--catalog", "{db}", "freeze", "x", "--query", "[1"], "JSON"),
    ],
)
def test_bad_arguments(db: str, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    assert needle in one_line_error(capsys, [a.replace("{db}", db) for a in argv])
