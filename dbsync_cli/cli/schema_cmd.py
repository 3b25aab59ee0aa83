"""`dbsync schema`: the OpenMRS sync model derived from the live database."""

from __future__ import annotations

import sys

import orjson
import pymysql
from rich.console import Console
from rich.table import Table

from dbsync_cli import exitcodes
from dbsync_cli.cli import common
from dbsync_cli.i18n import _
from dbsync_cli.openmrs import SchemaError, SchemaModel, synced_table_names


def schema(config: common.ConfigOption = None, json_out: common.JsonOption = False) -> None:
    """Show the synced tables with identity, references and OpenMRS rules, as read from the database."""
    cfg = common.load_config(config)
    section = "site_db" if cfg.role == "sender" else "central_db"
    params = cfg.db(section)
    try:
        with params.connect() as conn:
            model = SchemaModel.load(conn, params.database or "", synced_table_names(
                cfg.get(f"{cfg.role}.tables"), cfg.get(f"{cfg.role}.extra_tables")))
    except pymysql.MySQLError as exc:
        common.fail(f"{section} {params.describe()}: {exc.args[-1]}", exitcodes.UNREACHABLE)
    except SchemaError as exc:
        common.fail(_("schema: {error}").format(error=exc), exitcodes.SCHEMA)
    rows = model.describe()
    if json_out:
        sys.stdout.write(orjson.dumps({"database": model.database, "tables": rows}).decode() + "\n")
        return
    table = Table(title=f"synced tables of {model.database} ({len(rows)})")
    for col in ("table", "identity", "uuid index", "references", "rules"):
        table.add_column(col, overflow="fold")
    for row in rows:
        rules = []
        if row["secret_columns"]:
            rules.append("never sent: " + ", ".join(row["secret_columns"]))
        if row["site_suffix_columns"]:
            rules.append("|site suffix: " + ", ".join(row["site_suffix_columns"]))
        if row["attribute_id_value"]:
            rules.append("value id↔uuid for org.openmrs.* formats")
        refs = ", ".join(f"{c}→{t}" for c, t in row["references"].items())
        table.add_row(row["table"], row["identity"], "yes" if row["uuid_indexed"] else "no", refs, "; ".join(rules))
    Console().print(table)
