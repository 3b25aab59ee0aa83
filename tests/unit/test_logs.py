import logging
import random
import zlib

import orjson

from dbsync_cli import logs
from dbsync_cli.broker import BrokerSettings
from dbsync_cli.sender.publish import Publisher, PublishSettings


def test_log_file_and_stderr_mask_secrets(tmp_path, capsys) -> None:
    log_file = tmp_path / "logs" / "dbsync.log"
    logs.setup("INFO", 0, log_file, secrets=["s3cret-pass"])
    logging.getLogger("dbsync.test").error("could not log in with %s", "s3cret-pass")
    logging.getLogger("dbsync.test").debug("hidden at INFO")
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = log_file.read_text()
    assert "could not log in with ********" in text and "s3cret-pass" not in text
    assert "hidden" not in text
    assert "s3cret-pass" not in capsys.readouterr().err


def test_verbosity_changes_stderr_only(tmp_path, capsys) -> None:
    log_file = tmp_path / "dbsync.log"
    logs.setup("WARNING", 2, log_file)
    logging.getLogger("dbsync.test").info("info line")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert "info line" in capsys.readouterr().err
    assert "info line" not in log_file.read_text()


def test_large_messages_are_compressed_and_oversized_ones_kept_aside(tmp_path) -> None:
    settings = PublishSettings(broker=BrokerSettings(), compress_over=100, max_message_bytes=2000,
                               reject_dir=tmp_path / "rejected", wire_version=1)
    publisher = Publisher(settings, on_confirmed=lambda source: None)
    small = {"id": "s:1", "site": "s", "table": "obs", "data": {"x": "a"}}
    body, headers = publisher._frame([small], [publisher._json(small) or b""])
    assert "dbsync-encoding" not in headers and orjson.loads(body) == small
    assert headers["persistent"] == "true" and "_AMQ_DUPL_ID" not in headers
    assert headers["destination-type"] == "ANYCAST"
    big = {"id": "s:2", "site": "s", "table": "obs", "data": {"x": "a" * 1500}}
    body, headers = publisher._frame([big], [publisher._json(big) or b""])
    assert headers["dbsync-encoding"] == "deflate" and orjson.loads(zlib.decompress(body)) == big
    rng = random.Random(1)
    noise = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(5000))
    assert publisher._json({"id": "s:3", "site": "s", "table": "obs", "data": {"x": noise}}) is None
    assert (tmp_path / "rejected" / "s_3.json").exists()
