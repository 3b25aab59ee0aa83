"""Complex obs files: the pure rules (file names as OpenMRS reads them, refusals, chunk encoding, the sender's jobs)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import zlib
from pathlib import Path

import pytest

from dbsync_cli import complex_obs
from dbsync_cli.receiver import retry_rules
from dbsync_cli.sender import file_jobs


@pytest.mark.parametrize(("value", "name"), [
    ("image/png|xray_1.png", "xray_1.png"), ("xray_1.png", "xray_1.png"), ("a|b|scan.pdf", "scan.pdf"),
    ("title|", "title"), ("|", ""), ("", None), (None, None), (12, None)])
def test_the_file_name_is_what_openmrs_parse_data_key_reads(value, name) -> None:
    assert complex_obs.file_name(value) == name


@pytest.mark.parametrize(("name", "why"), [
    ("../x", "path separator"), ("/etc/passwd", "path separator"), ("a\\b", "path separator"),
    ("a\x00b.png", "NUL byte"), ("", "empty"), ("..", "not a file name"), (".", "not a file name"),
    ("a\nb", "control character"), ("x" * 256, "longer than 255 bytes")])
def test_names_that_could_leave_the_folder_are_refused(name, why) -> None:
    assert complex_obs.refusal(name) == why
    with pytest.raises(ValueError, match=why.split()[0]):
        complex_obs.path_in(Path("/tmp"), name)


def test_plain_names_pass() -> None:
    for name in ("xray_1.png", "Scan 2024-01-01.pdf", "ç.png", "a..b.png", ".hidden"):
        assert complex_obs.refusal(name) is None


def test_chunks_deflate_only_when_smaller_and_a_bomb_is_refused() -> None:
    text = b"a" * 50_000
    body, encoding = complex_obs.encode_chunk(text)
    assert encoding == complex_obs.DEFLATE and len(body) < 1000
    assert complex_obs.decode_chunk(body, encoding, 50_000) == text
    noise = os.urandom(4096)
    assert complex_obs.encode_chunk(noise) == (noise, complex_obs.IDENTITY)
    with pytest.raises(ValueError, match="inflates beyond"):
        complex_obs.decode_chunk(zlib.compress(b"\0" * 2_000_000), complex_obs.DEFLATE, 1_048_576)
    with pytest.raises(ValueError, match="unknown chunk encoding"):
        complex_obs.decode_chunk(b"x", "gzip", 10)


def test_verify_digest_of_a_file(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"bytes")
    assert complex_obs.digest_for_verify(tmp_path, "image/png|a.png") == hashlib.sha256(b"bytes").hexdigest()
    assert complex_obs.digest_for_verify(tmp_path, "image/png|b.png") == "absent"
    assert complex_obs.digest_for_verify(tmp_path, "x|../a.png") == "refused"
    assert complex_obs.digest_for_verify(tmp_path, None) is None
    assert complex_obs.digest_for_verify(None, "image/png|a.png") is None


def test_a_file_cause_is_made_due_when_its_file_arrives() -> None:
    assert retry_rules.retriggered("file:site1:xray.png")


def _obs(op: str, value: str | None, uuid: str = "u1") -> dict:
    return {"table": "obs", "op": op, "uuid": uuid, "data": None if op == "d" else {"value_complex": value}}


def test_sender_jobs_once_per_name_again_for_a_repair() -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute(file_jobs.SCHEMA)
    records = [_obs("c", "image/png|a.png"), _obs("u", "image/png|a.png"), _obs("d", None), _obs("c", None),
               {"table": "person", "op": "c", "data": {"value_complex": "x|b.png"}}, _obs("r", "c.pdf", "u2"),
               _obs("c", "x|../evil", "u3")]
    jobs = file_jobs.jobs_of(records)
    assert jobs == [("a.png", "u1"), ("a.png", "u1"), ("c.pdf", "u2"), ("../evil", "u3")]
    file_jobs.write(db, jobs, 1.0)
    states = dict(db.execute("SELECT name, state FROM complex_file"))
    assert states == {"a.png": "queued", "c.pdf": "queued", "../evil": "refused"}
    job = file_jobs.next_due(db, 2.0)
    assert job is not None and job.name == "a.png"
    assert file_jobs.start(db, job, "f" * 64, 10, 2) == 0
    file_jobs.confirmed(db, "a.png", 0, 1)
    again = file_jobs.next_due(db, 2.0)
    assert again is not None and again.name == "a.png" and again.state == "sending"  # a file being sent goes first
    assert file_jobs.start(db, again, "f" * 64, 10, 2) == 1  # on from the last confirmed chunk
    assert file_jobs.start(db, again, "e" * 64, 10, 2) == 0  # other bytes since: from the start
    file_jobs.finished(db, "a.png", 0)
    file_jobs.write(db, [("a.png", "u1")], 3.0)  # the obs edited: its file is not sent again
    assert db.execute("SELECT state, generation FROM complex_file WHERE name = 'a.png'").fetchone() == ("sent", 0)
    file_jobs.queue_now(db, [("a.png", "u1")], repair="verify:run")
    assert db.execute("SELECT state, generation, repair, confirmed FROM complex_file WHERE name = 'a.png'"
                      ).fetchone() == ("queued", 1, "verify:run", 0)
    file_jobs.confirmed(db, "a.png", 0, 2)  # the lane still sending the version before the repair: ignored
    file_jobs.finished(db, "a.png", 0)
    assert db.execute("SELECT state, confirmed FROM complex_file WHERE name = 'a.png'").fetchone() == ("queued", 0)
    file_jobs.missing(db, "c.pdf", 1, 99.0, "not in the folder")
    counts = file_jobs.counts(db)
    assert (counts["queued"], counts["missing"], counts["refused"], counts["sent"]) == (1, 1, 1, 0)
    assert counts["last_refused"]["reason"] == "path separator"
    assert file_jobs.next_due(db, 50.0).name == "a.png"
    file_jobs.finished(db, "a.png", 1)
    file_jobs.gone(db, "c.pdf")
    # OpenMRS reuses a purged file's name for a new obs: its file is sent again; the old obs's edit sends nothing
    file_jobs.write(db, [("a.png", "u9"), ("c.pdf", "u2")], 4.0)
    assert db.execute("SELECT name, state, obs_uuid, generation FROM complex_file WHERE name IN ('a.png', 'c.pdf') "
                      "ORDER BY name").fetchall() == [("a.png", "queued", "u9", 2), ("c.pdf", "gone", "u2", 0)]


SENDER = """
home = "{home}"
[sender]
id = "site1"
server_id = 11
complex_obs_dir = "{folder}"
[site_db]
user = "dbsync_repl"
password = "x"
[broker]
user = "dbsync"
password = "y"
"""


def test_config_check_names_a_complex_obs_folder_that_is_not_there(tmp_path: Path) -> None:
    from dbsync_cli import checks, config, exitcodes

    folder = tmp_path / "complex_obs"
    path = tmp_path / "sender.toml"
    path.write_text(SENDER.format(home=tmp_path / "home", folder=folder))
    cfg = config.load(path, "sender", env={})
    (finding,) = [f for f in checks.offline(cfg) if f.check == "sender.complex_obs_dir"]
    assert (finding.state, finding.exit_code) == ("error", exitcodes.CONFIG) and "not a directory" in finding.message
    folder.mkdir()
    (finding,) = [f for f in checks.offline(cfg) if f.check == "sender.complex_obs_dir"]
    assert finding.state == "ok"


def test_a_chunk_stored_as_is_may_not_hold_more_than_its_limit() -> None:
    assert complex_obs.decode_chunk(b"x" * 10, complex_obs.IDENTITY, 10) == b"x" * 10
    with pytest.raises(ValueError, match="more than 10 bytes"):
        complex_obs.decode_chunk(b"x" * 11, complex_obs.IDENTITY, 10)


def test_only_a_regular_file_itself_is_opened_never_a_link_or_a_fifo(tmp_path: Path) -> None:
    """OpenMRS's user owns the folder: a link swapped in for a file (to dbsync's secrets) is never followed."""
    secret = tmp_path / "sender.toml"
    secret.write_text("password = 'x'")
    (tmp_path / "scan.png").write_bytes(b"png")
    (tmp_path / "link.png").symlink_to(secret)
    os.mkfifo(tmp_path / "fifo.png")
    with complex_obs.open_regular(tmp_path / "scan.png") as handle:
        assert complex_obs.sha256_of(handle) == (hashlib.sha256(b"png").hexdigest(), 3)
    with pytest.raises(OSError):
        complex_obs.open_regular(tmp_path / "link.png")
    with pytest.raises(FileNotFoundError, match="not a regular file"):
        complex_obs.open_regular(tmp_path / "fifo.png")
    with pytest.raises(OSError):
        complex_obs.sha256_of(tmp_path / "link.png")
