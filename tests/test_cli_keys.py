"""``conclave keys``: a key is printed once (create, rotate) and never again; revoke and rotate."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conclave import cli

SECRET = "cli-test-key-hashing-secret-0123456789abcdef"
KEY = re.compile(r"ck_[0-9a-f]{16}_[A-Za-z0-9_-]{43}")


@pytest.fixture
def keys_runner(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """The CLI runner (empty directory, SQLite under ./data) with a key hashing secret."""
    monkeypatch.setenv("CONCLAVE_SECURITY__KEY_SECRET", SECRET)
    return runner


def invoke(runner: CliRunner, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(cli.app, ["keys", *args])
    return result.exit_code, result.stdout, result.stderr


def create(runner: CliRunner, *args: str) -> dict[str, object]:
    code, out, err = invoke(runner, "create", *args, "--json")
    assert code == 0, err
    return dict(json.loads(out))


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_create_json_prints_the_key_once_and_the_store_never_holds_it(
    keys_runner: CliRunner, tmp_path: Path
) -> None:
    """create --json prints exactly id, name, scope, key, expiresAt; no file holds the key."""
    made = create(keys_runner, "--name", "ci bot", "--scope", "run", "--expires", "30")
    assert list(made) == ["id", "name", "scope", "key", "expiresAt"]
    key = str(made["key"])
    assert KEY.fullmatch(key)
    assert key.startswith(f"ck_{made['id']}_")
    assert made["name"] == "ci bot"
    assert made["scope"] == "run"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", str(made["expiresAt"]))
    # The secret is everything after "ck_<id>_" (token_urlsafe may itself contain "_").
    secret_part = key.removeprefix(f"ck_{made['id']}_")
    assert len(secret_part) >= 43
    assert secret_part.encode() not in _all_bytes(tmp_path)


def test_create_human_form_shows_the_key_and_warns_it_is_shown_once(
    keys_runner: CliRunner,
) -> None:
    """The key appears once on stdout; stderr says it is shown once."""
    code, out, err = invoke(keys_runner, "create", "--name", "ops", "--scope", "admin")
    assert code == 0, err
    assert len(KEY.findall(out)) == 1
    assert "never" in out
    assert "shown once" in err


def test_list_never_shows_a_key_or_its_hash(keys_runner: CliRunner) -> None:
    """list (table and JSON) shows id, name, scope and state, never the key or hash."""
    made = create(keys_runner, "--name", "reader", "--scope", "read")
    code, out, err = invoke(keys_runner, "list", "--json")
    assert code == 0, err
    items = json.loads(out)["items"]
    assert [(i["id"], i["name"], i["scope"], i["state"]) for i in items] == [
        (made["id"], "reader", "read", "active")
    ]
    assert "key" not in items[0]
    assert "keyHash" not in items[0]
    assert "key_hash" not in items[0]
    code, table, _ = invoke(keys_runner, "list")
    for text in (out, table):
        assert not KEY.search(text)
        assert str(made["key"])[20:] not in text
        assert not re.search(r"[0-9a-f]{64}", text)
    assert str(made["id"]) in table
    assert "reader" in table


def test_revoke_marks_the_key_revoked_and_an_unknown_id_exits_2(keys_runner: CliRunner) -> None:
    """revoke ID: the key lists as revoked; an unknown ID exits 2 naming --id."""
    made = create(keys_runner, "--name", "gone", "--scope", "read")
    code, out, err = invoke(keys_runner, "revoke", str(made["id"]), "--json")
    assert code == 0, err
    assert json.loads(out)["state"] == "revoked"
    _, listed, _ = invoke(keys_runner, "list", "--json")
    assert json.loads(listed)["items"][0]["state"] == "revoked"
    code, _, err = invoke(keys_runner, "revoke", "0123456789abcdef")
    assert code == 2
    assert "--id" in err
    assert "0123456789abcdef" in err


def test_rotate_prints_a_new_key_and_keeps_the_old_for_the_overlap(
    keys_runner: CliRunner,
) -> None:
    """rotate ID --overlap S: a new key (same name and scope); the old one expires in S s."""
    made = create(keys_runner, "--name", "svc", "--scope", "run")
    code, out, err = invoke(keys_runner, "rotate", str(made["id"]), "--overlap", "120", "--json")
    assert code == 0, err
    rotated = json.loads(out)
    assert rotated["replaces"] == made["id"]
    assert rotated["key"] != made["key"]
    assert (rotated["name"], rotated["scope"]) == ("svc", "run")
    assert KEY.fullmatch(rotated["key"])
    assert rotated["oldExpiresAt"] is not None
    _, listed, _ = invoke(keys_runner, "list", "--json")
    states = {i["id"]: (i["state"], i["rotatedFrom"]) for i in json.loads(listed)["items"]}
    assert states == {made["id"]: ("active", None), rotated["id"]: ("active", made["id"])}
    code, _, err = invoke(keys_runner, "rotate", str(made["id"]), "--overlap", "-1")
    assert code == 2
    assert "--overlap" in err


def test_create_without_a_proper_secret_exits_2_naming_it(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No (or a placeholder) key hashing secret: exit 2 naming CONCLAVE_SECURITY__KEY_SECRET."""
    code, _, err = invoke(runner, "create", "--name", "x", "--scope", "read")
    assert code == 2
    assert "CONCLAVE_SECURITY__KEY_SECRET" in err
    monkeypatch.setenv("CONCLAVE_SECURITY__KEY_SECRET", "changeme")
    code, _, err = invoke(runner, "create", "--name", "x", "--scope", "read")
    assert code == 2
    assert "CONCLAVE_SECURITY__KEY_SECRET" in err
    assert "placeholder" in err


@pytest.mark.parametrize(
    ("args", "field"),
    [(["--name", "", "--scope", "read"], "--name"),
     (["--name", "x", "--scope", "root"], "--scope"),
     (["--name", "x", "--scope", "read", "--expires", "0"], "--expires")],
)  # fmt: skip
def test_bad_options_exit_2_naming_them(
    keys_runner: CliRunner, args: list[str], field: str
) -> None:
    """An empty name, an unknown scope or a non-positive expiry exits 2 naming the option."""
    code, _, err = invoke(keys_runner, "create", *args)
    assert code == 2
    assert field in err
