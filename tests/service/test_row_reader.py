"""dbsync's row reader (dbsync_cli/sender/row_reader.py) gives exactly the library's values: the same binlog range
decoded by mysql-replication's own reader and by dbsync's, row for row, value for value, type for type, none source
for none source, over every column type MariaDB logs, NULLs, edges, odd bytes, and FULL, NOBLOB and MINIMAL row
images (columns left out of an image)."""

from __future__ import annotations

import datetime as dt
import os
import random
from typing import Any

import pytest
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from dbsync_cli.sender import row_reader
from devtools.services import Services

TABLE = """CREATE TABLE {db}.every (
    id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    t TINYINT, tu TINYINT UNSIGNED, b1 TINYINT(1), s SMALLINT, su SMALLINT UNSIGNED, m MEDIUMINT,
    mu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, g BIGINT, gu BIGINT UNSIGNED, f FLOAT, d DOUBLE,
    dec1 DECIMAL(19,4), dec2 DECIMAL(5,0), bit1 BIT(1), bit9 BIT(9),
    vs VARCHAR(20), vl VARCHAR(300), ch CHAR(38), chl CHAR(100) CHARACTER SET latin1, vb VARBINARY(40),
    bn BINARY(4), tt TINYTEXT, tx TEXT, mt MEDIUMTEXT, lt LONGTEXT, bl BLOB, ta VARCHAR(10) CHARACTER SET ascii,
    u3 VARCHAR(40) CHARACTER SET utf8mb3, u3t TEXT CHARACTER SET utf8mb3,
    dd DATE, dt0 DATETIME, dt3 DATETIME(3), dt6 DATETIME(6), dt1 DATETIME(1), dt5 DATETIME(5),
    ts TIMESTAMP NULL, ts6 TIMESTAMP(6) NULL, tm TIME, tm3 TIME(3), y YEAR,
    e ENUM('a','b','c'), st SET('x','y','z'), js JSON, geo GEOMETRY NULL
) CHARACTER SET utf8mb4"""

COLUMNS = ["t", "tu", "b1", "s", "su", "m", "mu", "i", "iu", "g", "gu", "f", "d", "dec1", "dec2", "bit1", "bit9",
           "vs", "vl", "ch", "chl", "vb", "bn", "tt", "tx", "mt", "lt", "bl", "ta", "u3", "u3t", "dd", "dt0", "dt3", "dt6", "dt1",
           "dt5", "ts", "ts6", "tm", "tm3", "y", "e", "st", "js"]


def _value(rng: random.Random, column: str) -> Any:
    if rng.random() < 0.15:
        return None
    ints = {"t": (-128, 127), "tu": (0, 255), "b1": (0, 1), "s": (-32768, 32767), "su": (0, 65535),
            "m": (-8388608, 8388607), "mu": (0, 16777215), "i": (-2**31, 2**31 - 1), "iu": (0, 2**32 - 1),
            "g": (-2**63, 2**63 - 1), "gu": (0, 2**64 - 1), "bit1": (0, 1), "bit9": (0, 511), "y": (1901, 2155)}
    if column in ints:
        low, high = ints[column]
        return rng.choice([low, high, 0, rng.randint(low, high)])
    if column in ("f", "d"):
        return rng.choice([0.0, -1.5, 3.25e10, rng.uniform(-1e6, 1e6)])
    if column == "dec1":
        return rng.choice(["0", "-123456789012345.6789", "999999999999999.9999", f"{rng.uniform(-1e6, 1e6):.4f}"])
    if column == "dec2":
        return rng.choice(["0", "-99999", "12345"])
    text = rng.choice(["", "a", "ação", "日本語", "😀 emoji", "x" * rng.randint(0, 20), "quote ' \" \\ \t\n"])
    if column in ("vs",):
        return text[:20]
    if column in ("vl", "tt", "tx", "mt", "lt"):
        return text * rng.choice([1, 3, 40]) if column != "tt" else text
    if column == "ch":
        return rng.choice(["", "3fbed1b8-1934-43ac-9104-76a84cadaa4b", "short"])
    if column in ("chl",):
        return rng.choice(["", "café", "plain"])
    if column in ("vb", "bn", "bl"):
        return bytes(rng.randrange(256) for _ in range(4 if column == "bn" else rng.randint(0, 40)))
    if column == "ta":
        return rng.choice(["", "ascii", "AbC-123"])
    if column in ("u3", "u3t"):  # OpenMRS's tables are utf8mb3
        return rng.choice(["", "ação ñ", "3fbed1b8-1934-43ac-9104-76a84cadaa4b", "日本"]) * (1 if column == "u3" else 9)
    if column == "dd":
        return rng.choice([dt.date(1, 1, 1), dt.date(9999, 12, 31), dt.date(2000, 2, 29), dt.date(1976, 5, 19)])
    if column.startswith("dt"):
        return rng.choice([dt.datetime(1000, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
                           dt.datetime(2026, 12, 7, 23, 5, 25, rng.randrange(1_000_000)),
                           dt.datetime(1970, 1, 1, 0, 0, 0, 100000)])
    if column.startswith("ts"):
        return rng.choice([dt.datetime(2000, 1, 1, 0, 0, 1), dt.datetime(2026, 12, 7, 23, 5, 25, 123456)])
    if column.startswith("tm"):
        return rng.choice(["-838:59:59", "838:59:59", "00:00:00", "-00:00:01.5", "12:34:56.789"])
    if column == "e":
        return rng.choice(["a", "b", "c"])
    if column == "st":
        return rng.choice(["", "x", "x,z", "x,y,z"])
    if column == "js":
        return rng.choice(['{"a": 1, "b": [true, null, 2.5, "s"]}', "[]", '"text"', "12"])
    raise AssertionError(column)


def _decode(site: Any, database: str, start: tuple[str, int]) -> list[tuple[str, Any]]:
    stream = BinLogStreamReader(
        connection_settings={"host": site.repl.host, "port": site.repl.port, "user": site.repl.user,
                             "password": site.repl.password},
        server_id=7401, log_file=start[0], log_pos=start[1], resume_stream=True, blocking=False,
        only_schemas=[database], only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent])
    try:
        return [(type(event).__name__, row) for event in stream for row in event.rows]
    finally:
        stream.close()


def _typed(rows: list[tuple[str, Any]]) -> list[Any]:
    """Values with their types, so that 1 and 1.0 or a str and bytes are not taken as equal."""
    def typed(image: dict[str, Any]) -> dict[str, Any]:
        return {k: (type(v).__name__, v) for k, v in image.items()}
    return [(kind, {key: typed(value) if key.endswith("values") else value for key, value in row.items()})
            for kind, row in rows]


@pytest.mark.parametrize("image", ["FULL", "NOBLOB", "MINIMAL"])
def test_same_rows_as_the_library(services: Services, image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    site = services["site1"]
    database = f"t_rowreader_{os.getpid()}_{image.lower()}"
    rng = random.Random(29 + len(image))
    with site.admin.connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {database}")
        cur.execute(f"CREATE DATABASE {database}")
        cur.execute(TABLE.format(db=database))
        cur.execute("SHOW MASTER STATUS")
        status = cur.fetchone()
        assert status is not None, "binary logging is off"
        file, pos = status[:2]
        cur.execute("SET SESSION binlog_row_image = %s", (image,))
        cur.execute("SET SESSION sql_mode = ''")  # zero dates and out-of-range values as a lax site writes them
        names = ", ".join(COLUMNS)
        marks = ", ".join("%s" for _ in COLUMNS)
        for _ in range(60):
            cur.executemany(f"INSERT INTO {database}.every ({names}) VALUES ({marks})",  # noqa: S608
                            [[_value(rng, c) for c in COLUMNS] for _ in range(rng.randint(1, 5))])
        cur.execute(f"INSERT INTO {database}.every (dd, dt0, dt6) VALUES ('0000-00-00', '0000-00-00 00:00:00', "
                    "'2026-00-10 10:00:00.5')")
        cur.execute(f"INSERT INTO {database}.every (geo) VALUES (ST_GeomFromText('POINT(1 2)'))")
        for _ in range(30):
            column = rng.choice(COLUMNS)
            cur.execute(f"UPDATE {database}.every SET {column} = %s WHERE id %% 7 = %s",  # noqa: S608
                        (_value(rng, column), rng.randrange(7)))
        cur.execute(f"DELETE FROM {database}.every WHERE id % 5 = 0")  # noqa: S608
        conn.commit()
    planned: list[tuple[str, bool]] = []
    real_reader = row_reader._reader

    def counting(column: Any) -> Any:
        reader = real_reader(column)
        planned.append((column.name, reader is not None))
        return reader

    monkeypatch.setattr(row_reader, "_reader", counting)
    try:
        row_reader.uninstall()
        library = _decode(site, database, (file, pos))
        assert not planned
        assert row_reader.install()
        ours = _decode(site, database, (file, pos))
    finally:
        row_reader.install()
        with site.admin.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {database}")
    # dbsync's reader really read: its own way for the common types, the library's for the rest
    read_here = {name for name, own in planned if own}
    assert {"i", "g", "d", "vs", "tx", "u3", "dt6", "id"} <= read_here, read_here
    assert {"dec1", "dd", "tm", "e", "js"} & {name for name, own in planned if not own}
    kinds = {kind for kind, _ in library}
    assert kinds == {"WriteRowsEvent", "UpdateRowsEvent", "DeleteRowsEvent"}, kinds
    assert len(library) > 150
    assert _typed(ours) == _typed(library)
    if image != "FULL":  # columns were left out of images: both readers said so
        assert any("cols bitmap" in row.get("after_none_sources", {}).values() for _, row in library)
