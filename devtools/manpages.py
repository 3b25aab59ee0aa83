"""Man pages generated from the CLI itself: `scripts/gen-man` writes them to man/, a unit test checks for drift.

One page per command, named like git's: ``dbsync.1`` (overview, global options, environment, files, every exit
code), ``dbsync-<command>.1`` for each command and command group, and ``dbsync-<group>-<command>.1`` for each
command of a group (``dbsync-conflicts-resolve.1``). Name, synopsis, description, arguments and options (help,
defaults) come from walking ``typer.main.get_command(app)``; EXAMPLES and EXIT STATUS come from the tables below.
The output is deterministic (no dates, no terminal width), so the drift test can compare bytes.
"""

from __future__ import annotations

import re
from typing import Any

from dbsync_cli import exitcodes

SOURCE = "dbsync"
MANUAL = "dbsync manual"

EXIT_TEXT = {
    exitcodes.OK: "success; for a long-running command also a clean stop after SIGTERM or SIGINT",
    exitcodes.FAILURE: "failure; the last line on stderr and the log say why",
    exitcodes.CONFIG: "configuration or usage problem (the message names the key or option)",
    exitcodes.UNREACHABLE: "a configured server could not be reached (database, broker), or the broker refused "
                           "the TLS certificate or the login",
    exitcodes.BINLOG_PURGED: "the checkpoint's binlog file has been purged on the site server, or its binlog "
                             "history restarted (RESET MASTER, a restored or rebuilt server): changes since then "
                             "are lost to capture; run with `--snapshot when_needed`",
    exitcodes.BINLOG_SETTINGS: "the site server's binlog settings cannot support capture (needs log_bin, "
                               "binlog_format=ROW, binlog_row_image=FULL), or a row event's columns cannot be known "
                               "(no column names and a table altered twice while the sender was behind)",
    exitcodes.SCHEMA: "the database lacks a configured table or column (dbsync schema shows the model)",
    exitcodes.DANGLING_REFERENCE: "a site row references a row that does not exist in the site database (a "
                                  "dangling reference): nothing after it is sent until the row is fixed",
    exitcodes.ANOTHER_SENDER: "another sender (or a capture pipe) of the same home is running: one per home",
    exitcodes.PRIVILEGES: "a database user lacks a privilege its role needs, or has one it must not have (the "
                          "sender's user must not be able to write); or the broker user lacks the send permission "
                          "on its destination (broker.xml's security-settings)",
    exitcodes.HOME_FULL: "the home (state directory: state.sqlite, logs) has no free space left: the line names it "
                         "and its free space; free space there, then start again",
    exitcodes.BUNDLE_REFUSED: "dbsync import refused a bundle: made by a site not registered here, not signed by the "
                              "public key recorded for its site, or damaged (the line says which); nothing of it "
                              "was stored",
    exitcodes.ANOTHER_RECEIVER: "another receiver (or dbsync apply) already applies to the same central state "
    "schema: run one per central",
    exitcodes.RECEIVER_BUSY: "the running receiver holds the applier lock and did not take the action within --wait "
    "seconds: nothing changed; try again",
}
_BASIC = (exitcodes.OK, exitcodes.FAILURE, exitcodes.CONFIG, exitcodes.HOME_FULL)
_NET = (*_BASIC, exitcodes.UNREACHABLE)
_DB = (*_NET, exitcodes.PRIVILEGES)  # commands that log in to a database: a missing grant is exit 15
_CAPTURE = (*_DB, exitcodes.BINLOG_PURGED, exitcodes.BINLOG_SETTINGS, exitcodes.SCHEMA)
_STATE = (*_DB, exitcodes.SCHEMA)  # the receiver's administration commands on the state schema
STATUS_EXIT = {0: "OK", 1: "WARNING: a warning threshold was reached", 2: "CRITICAL: a critical threshold was "
               "reached, or the broker or the database does not answer", 3: "UNKNOWN: the check could not judge "
               "(invalid config, unreadable sender state, no receiver state schema)"}

#: command path → exit codes that command can return (status has its own meaning: STATUS_EXIT)
EXIT_CODES: dict[str, tuple[int, ...]] = {
    "capture": (*_CAPTURE, exitcodes.ANOTHER_SENDER),
    "sender": (*_CAPTURE, exitcodes.DANGLING_REFERENCE, exitcodes.ANOTHER_SENDER),
    "enrich": (*_DB, exitcodes.SCHEMA, exitcodes.DANGLING_REFERENCE), "publish": (*_NET, exitcodes.PRIVILEGES),
    "consume": _DB, "apply": (*_STATE, exitcodes.ANOTHER_RECEIVER),
    "receiver": (*_STATE, exitcodes.ANOTHER_RECEIVER),
    "schema": (*_DB, exitcodes.SCHEMA), "config check": (exitcodes.OK, exitcodes.CONFIG, exitcodes.UNREACHABLE,
                                                          exitcodes.BINLOG_SETTINGS, exitcodes.PRIVILEGES),
    "conflicts list": _STATE, "conflicts show": _STATE, "conflicts resolve": (*_STATE, exitcodes.RECEIVER_BUSY),
    "retry list": _STATE, "retry show": _STATE, "retry drop": (*_STATE, exitcodes.RECEIVER_BUSY),
    "retry again": (*_STATE, exitcodes.RECEIVER_BUSY),
    "archive list": _STATE, "archive show": _STATE,
    "sites add": _DB, "sites list": _DB, "sites disable": _DB, "sites enable": _DB, "sites remove": _DB,
    "sites update": _DB,
}

#: command path → (explanation, command line) pairs
EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "": [
        ("The sender of a site, in one process:", "dbsync sender --config /etc/dbsync/sender.toml"),
        ("The same chain as three processes:",
         "dbsync capture -c sender.toml | dbsync enrich -c sender.toml | dbsync publish -c sender.toml"),
        ("The receiver at central:", "dbsync receiver --config /etc/dbsync/receiver.toml"),
        ("Is everything healthy?", "dbsync status --config /etc/dbsync/receiver.toml"),
    ],
    "capture": [
        ("What a site would send, without a broker:",
         "dbsync capture -c sender.toml --until-idle --snapshot never | dbsync enrich -c sender.toml "
         "| jq -c '{table, op, uuid}'"),
        ("Reload from a snapshot after the checkpoint's binlog was purged (exit 10):",
         "dbsync capture -c sender.toml --snapshot when_needed | dbsync enrich -c sender.toml "
         "| dbsync publish -c sender.toml"),
    ],
    "enrich": [("Sync messages for the first 100 change events:",
                "dbsync capture -c sender.toml --max-events 100 | dbsync enrich -c sender.toml")],
    "publish": [("The last stage of the sender chain, echoing what the broker confirmed:",
                 "dbsync capture -c s.toml | dbsync enrich -c s.toml | dbsync publish -c s.toml --echo")],
    "export": [("Once: the site's public key, for dbsync sites add --public-key at central:",
                "dbsync export --public-key -c sender.toml"),
               ("A clinic with no network, the sender stopped: its changes onto a USB stick (run again to resume):",
                "dbsync export -c sender.toml --to /media/usb/site5-2026-12-07.dbsync")],
    "import": [("At central, while the receiver runs: a site's bundle, waiting until it is applied:",
                "dbsync import /media/usb/site5-2026-12-07.dbsync -c receiver.toml --wait 600")],
    "sender": [("Run the sender (systemd: examples/dbsync-sender.service):",
                "dbsync sender --config /etc/dbsync/sender.toml"),
               ("Catch up to the end of the binlog, then exit:",
                "dbsync sender --config /etc/dbsync/sender.toml --until-idle")],
    "consume": [("Move what is waiting on the broker into the inbox and apply it:",
                 "dbsync consume -c receiver.toml --idle-exit 5 | dbsync apply -c receiver.toml")],
    "apply": [("Apply what the inbox holds, then retry the retry queue:",
               "dbsync apply -c receiver.toml --from-inbox --retry"),
              ("Apply messages captured at a site (no broker):",
               "dbsync capture -c s.toml --until-idle | dbsync enrich -c s.toml | dbsync apply -c r.toml")],
    "receiver": [("Run the receiver (systemd: examples/dbsync-receiver.service):",
                  "dbsync receiver --config /etc/dbsync/receiver.toml --site-id central")],
    "status": [
        ("The human table:", "dbsync status --config /etc/dbsync/receiver.toml"),
        ("For scripts: the report as JSON, the state in the exit code:",
         "dbsync status --json -c /etc/dbsync/receiver.toml | jq '.problems[].message'"),
        ("Stricter thresholds for one run:",
         "dbsync status -c receiver.toml --retry-critical 10 --site-silent-warning-minutes 30"),
        ("Cron or Nagios (one line, syslog, same exit code):",
         "scripts/check-dbsync --config /etc/dbsync/receiver.toml"),
    ],
    "schema": [("Which tables are synced, with their references:", "dbsync schema -c sender.toml"),
               ("The same as JSON:", "dbsync schema -c sender.toml --json | jq '.tables[].table'")],
    "config check": [("Validate a config and test that its servers answer:",
                      "dbsync config check --config /etc/dbsync/sender.toml"),
                     ("Validate only, with the password from the environment:",
                      "DBSYNC_BROKER__PASSWORD=secret dbsync config check -c sender.toml --offline")],
    "conflicts list": [("Unresolved conflicts:", "dbsync conflicts list -c receiver.toml"),
                       ("Every conflict, as JSON:", "dbsync conflicts list -c receiver.toml --all --json"),
                       ("Site changes to central's own rows not applied, per site and table:",
                        "dbsync conflicts list -c receiver.toml --central-owned")],
    "conflicts show": [("Central row and incoming change side by side:", "dbsync conflicts show 7 -c receiver.toml")],
    "conflicts resolve": [
        ("Keep central's row:",
         "dbsync conflicts resolve 7 -c receiver.toml --keep-central"),
        ("Take the site's change:", "dbsync conflicts resolve 8 -c receiver.toml --take-incoming"),
        ("Take two columns from the site, keep the rest:",
         "dbsync conflicts resolve 9 -c receiver.toml --merge gender,birthdate"),
        ("The row was fixed by hand; release the messages waiting behind it:",
         "dbsync conflicts resolve 10 -c receiver.toml"),
        ("Keep central's rows for every conflict of a site's table older than a day (a count, then a question):",
         "dbsync conflicts resolve -c receiver.toml --site site1 --table person_name --older-than 1d "
         "--keep-central"),
    ],
    "sites central-key": [("Central's public key, for each site's sender.central_public_key (verify by file):",
                           "dbsync sites central-key -c receiver.toml")],
    "sites add": [("Register a site before its sender starts:",
                   "dbsync sites add site1 --name 'Site One' -c receiver.toml")],
    "sites list": [("Sites and their last sync:", "dbsync sites list -c receiver.toml")],
    "sites disable": [("Stop applying a site's messages (they wait in the retry queue):",
                       "dbsync sites disable site1 -c receiver.toml")],
    "sites enable": [("Apply them again:", "dbsync sites enable site1 -c receiver.toml")],
    "sites remove": [("Unregister a site:", "dbsync sites remove site1 -c receiver.toml")],
    "sites update": [("Name the broker user of a site registered before broker users were recorded:",
                      "dbsync sites update site1 --broker-user site1 -c receiver.toml")],
    "sites resync": [("Ask site1's running sender to send a patient and everything that hangs off them again:",
                      "dbsync sites resync site1 --patient 5b5e2c3a-8a4f-4c5e-9d2b-3f1e6a7b8c9d -c receiver.toml"),
                     ("One row of one table:",
                      "dbsync sites resync site1 -t obs --uuid 0f9a1c2e-4b6d-4e8f-a1b3-c5d7e9f1a2b4 -c receiver.toml")],
    "retry list": [("The oldest entries and why they wait:", "dbsync retry list -c receiver.toml"),
                   ("One site's permanent errors, as JSON:",
                    "dbsync retry list -c receiver.toml --site site1 --kind permanent --json")],
    "retry show": [("One entry with the message it holds:", "dbsync retry show 42 -c receiver.toml")],
    "archive list": [("Everything central did with one row, oldest first:",
                      "dbsync archive list -c receiver.toml --uuid 0f9a1c2e-4b6d-4e8f-a1b3-c5d7e9f1a2b4"),
                     ("Everything of one patient (their person uuid) in the last week, as JSON:",
                      "dbsync archive list -c receiver.toml --patient 5b5e2c3a-8a4f-4c5e-9d2b-3f1e6a7b8c9d "
                      "--since 7d --json"),
                     ("What one site sent that was parked for retry yesterday:",
                      "dbsync archive list -c receiver.toml --site site1 --outcome retry --since 2026-12-06 "
                      "--until 2026-12-07")],
    "archive show": [("One archive row: the message as it came and every outcome it had:",
                      "dbsync archive show 1234 -c receiver.toml")],
    "retry again": [("Retry the whole queue after creating missing metadata:", "dbsync retry again -c receiver.toml"),
                    ("Retry one site's entries about one table, without a question (scripts):",
                     "dbsync retry again -c receiver.toml --site site1 --table obs --yes")],
    "retry drop": [("Drop one entry for good:", "dbsync retry drop 42 -c receiver.toml"),
                   ("Drop a site's entries older than a week (a count and a question first):",
                    "dbsync retry drop -c receiver.toml --site site1 --older-than 1w")],
    "verify": [("At a site: does central hold every row of this site?", "dbsync verify -c sender.toml"),
               ("Mend what differs, one table:", "dbsync verify -c sender.toml --table obs --repair"),
               ("At central: the latest result of each site:", "dbsync verify --status -c receiver.toml")],
    "resync": [("Send a patient and everything that hangs off them again:",
                "dbsync resync -c sender.toml --patient 5b5e2c3a-8a4f-4c5e-9d2b-3f1e6a7b8c9d"),
               ("One row of one table:",
                "dbsync resync -c sender.toml -t encounter --uuid 0f9a1c2e-4b6d-4e8f-a1b3-c5d7e9f1a2b4")],
    "console serve": [("Serve the receiver's console on 127.0.0.1:8800:", "dbsync console serve -c receiver.toml"),
                      ("Another address and port (behind a reverse proxy):",
                       "dbsync console serve -c receiver.toml --host 10.0.0.5 --port 8443")],
    "console user add": [("An operator (asks for the password twice):",
                          "dbsync console user add ana --role operator -c receiver.toml"),
                         ("A read-only user from a script, the password on stdin:",
                          "printf '%s\\n' \"$PASSWORD\" | dbsync console user add rui --password-stdin -c receiver.toml"),
                         ("A new password (ends the user's sessions):",
                          "dbsync console user add ana --role operator -c receiver.toml")],
    "console user list": [("The users and their roles:", "dbsync console user list -c receiver.toml")],
    "console user remove": [("Remove a user (every session of theirs ends at once):",
                             "dbsync console user remove rui -c receiver.toml")],
    "console owa": [("The app an OpenMRS admin uploads in Manage Apps:",
                     "dbsync console owa --url https://central.example.org/dbsync/ -o dbsync-console.zip")],
}

ROOT_EXTRA = {
    "ENVIRONMENT": [
        ("DBSYNC_CONFIG", "The config file when `--config` is not given."),
        ("DBSYNC_ROLE", "sender or receiver, for a config given only through the environment (no file)."),
        ("DBSYNC_<SECTION>__<KEY>", "Overrides a config key, e.g. DBSYNC_BROKER__PASSWORD for broker.password or "
                                    "DBSYNC_HOME for home."),
        ("DBSYNC_<SECTION>__<KEY>_FILE", "Reads a secret key (a password) from a file."),
    ],
    "FILES": [
        ("/etc/dbsync/sender.toml, /etc/dbsync/receiver.toml", "Configs (examples/ explains every key)."),
        ("<home>/state.sqlite", "The sender's checkpoint and the rate record read by dbsync status."),
        ("<home>/logs/dbsync.log", "The log (rotated, 5 x 20 MB), unless log_file says otherwise."),
        ("<home>/rejected/", "Messages over broker.max_message_bytes, kept instead of sent."),
    ],
}


# ---- roff --------------------------------------------------------------------------------------------------

def _esc(text: str) -> str:
    """Plain text → roff: backslashes, then `code` as bold, no line starting with a control character."""
    text = text.replace("\\", "\\e")
    text = re.sub(r"`([^`]+)`", lambda m: "\\fB" + m.group(1).replace("-", "\\-") + "\\fR", text)
    return "".join(ch if ord(ch) < 128 else f"\\[u{ord(ch):04X}]" for ch in text)


def _lines(text: str) -> str:
    out = []
    for line in text.splitlines():
        out.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(out)


def _paragraphs(text: str) -> list[str]:
    """Help text → paragraphs, each reflowed onto one line (the man reader fills them)."""
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def _opt(name: str) -> str:
    return "\\fB" + _hy(name) + "\\fR"


def _metavar(param: Any) -> str | None:
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return None
    if param.metavar:
        return param.metavar
    if hasattr(param, "bare_type"):  # typer's own click
        kind = param.bare_type()
    else:  # click
        kind = param.type.name
    return {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH"}.get(str(kind).lower(),
                                                                                  str(kind).upper())


def _is_argument(param: Any) -> bool:
    return type(param).__name__.endswith("Argument")


def _default(param: Any) -> str | None:
    if getattr(param, "show_default", None) is False or getattr(param, "is_flag", False) \
            or getattr(param, "count", False):
        return None
    value = param.default
    if value is None or callable(value) or value == ():
        return None
    return str(value)


def _option_items(params: list[Any]) -> list[str]:
    items = []
    for param in params:
        if _is_argument(param) or getattr(param, "hidden", False):
            continue
        names = ", ".join(_opt(o) for o in sorted(param.opts, key=lambda o: (o.startswith("--"), o)))
        if param.secondary_opts:
            names += ", " + ", ".join(_opt(o) for o in param.secondary_opts)
        metavar = _metavar(param)
        head = names + (f" \\fI{metavar}\\fR" if metavar else "")
        text = _esc(" ".join((param.help or "").split()))
        default = _default(param)
        if default is not None:
            text += f" Default: {_esc(default)}."
        if getattr(param, "count", False):
            text += " Repeat for more."
        items.append(f".TP\n{head}\n{_lines(text)}")
    items.append(f".TP\n{_opt('--help')}\nShow the help and exit.")
    return items


def _argument_items(params: list[Any]) -> list[str]:
    items = []
    for param in params:
        if not _is_argument(param):
            continue
        text = _esc(" ".join((getattr(param, "help", None) or "").split())) or "See DESCRIPTION."
        if not param.required:
            text += " Optional."
        items.append(f".TP\n\\fI{param.name.upper()}\\fR\n{_lines(text)}")
    return items


def _synopsis(words: list[str], params: list[Any], group: bool = False) -> str:
    parts = [f".B {' '.join(words)}"]
    rest = ["[\\fIOPTIONS\\fR]"]
    for param in params:
        if _is_argument(param):
            name = f"\\fI{param.name.upper()}\\fR"
            rest.append(name if param.required else f"[{name}]")
    if group:
        rest.append("\\fICOMMAND\\fR [\\fIARGS\\fR]...")
    return parts[0] + "\n" + " ".join(rest)


def _hy(text: str) -> str:
    """Hyphens that must stay hyphens (names, options, command lines), not typographic dashes."""
    return text.replace("-", "\\-")


def _header(page: str, summary: str) -> str:
    return f'.TH {_hy(page.upper())} 1 "" "{SOURCE}" "{MANUAL}"\n.SH NAME\n{_hy(page)} \\- {_esc(summary)}'


def _short(command: Any) -> str:
    """The first sentence of the help, for NAME and command lists."""
    paragraphs = _paragraphs(command.help or "")
    first = paragraphs[0] if paragraphs else ""
    return re.split(r"(?<=[.;])\s", first, maxsplit=1)[0].rstrip(".;")


def _section(title: str, body: list[str] | str) -> str:
    text = body if isinstance(body, str) else "\n".join(body)
    return f".SH {title}\n{text}" if text else ""


def _exit_section(path: str) -> str:
    if path == "status":
        items = [f".TP\n{code}\n{_esc(text)}" for code, text in STATUS_EXIT.items()]
    else:
        items = [f".TP\n{code}\n{_esc(EXIT_TEXT[code])}" for code in sorted(EXIT_CODES.get(path, _BASIC))]
    return _section("EXIT STATUS", items)


def _examples_section(path: str) -> str:
    items = []
    for text, command in EXAMPLES.get(path, []):
        items.append(f".PP\n{_lines(_esc(text))}\n.PP\n.RS 4\n.nf\n{_lines(_hy(_esc(command)))}\n.fi\n.RE")
    return _section("EXAMPLES", items)


def _description(help_text: str) -> list[str]:
    return [".PP\n" + _lines(_esc(p)) for p in _paragraphs(help_text)]


def _see_also(pages: list[str]) -> str:
    return _section("SEE ALSO", ",\n".join(f"\\fB{_hy(p)}\\fR(1)" for p in pages))


def _join(parts: list[str]) -> str:
    return "\n".join(p for p in parts if p) + "\n"


def _command_page(words: list[str], command: Any) -> str:
    page = "-".join(words)
    path = " ".join(words[1:])
    parts = [
        _header(page, _short(command)),
        _section("SYNOPSIS", _synopsis(words, command.params)),
        _section("DESCRIPTION", _description(command.help or "")),
        _section("ARGUMENTS", _argument_items(command.params)),
        _section("OPTIONS", _option_items(command.params)),
        _exit_section(path),
        _examples_section(path),
        _see_also(["dbsync"] + (["-".join(words[:-1])] if len(words) > 2 else [])),
    ]
    return _join(parts)


def _commands_list(prefix: list[str], commands: dict[str, Any]) -> list[str]:
    items = []
    for name, sub in commands.items():
        if getattr(sub, "hidden", False):
            continue
        page = _hy("-".join([*prefix, name]))
        items.append(f".TP\n\\fB{name}\\fR\n{_lines(_esc(_short(sub)))}. See \\fB{page}\\fR(1).")
    return items


def _group_page(words: list[str], group: Any) -> str:
    page = "-".join(words)
    subs = [f"{page}-{name}" for name, sub in group.commands.items() if not getattr(sub, "hidden", False)]
    parts = [
        _header(page, _short(group)),
        _section("SYNOPSIS", _synopsis(words, group.params, group=True)),
        _section("DESCRIPTION", _description(group.help or "")),
        _section("COMMANDS", _commands_list(words, group.commands)),
        _section("OPTIONS", _option_items(group.params)),
        _see_also(["dbsync", *subs]),
    ]
    return _join(parts)


def _root_page(root: Any) -> str:
    description = _description(root.help or "") + [
        ".PP\n" + _esc("Each stage of the sender (capture, enrich, publish) and of the receiver (consume, apply) is "
                       "also a command that reads and writes NDJSON, so `dbsync sender` and `dbsync receiver` run "
                       "the same chains in one supervised process. Every command takes `--config FILE`; the role "
                       "(sender or receiver) is the section the config has: [sender] or [receiver]/[central_db]."),
    ]
    codes = sorted(EXIT_TEXT)
    parts = [
        _header("dbsync", _short(root)),
        _section("SYNOPSIS", _synopsis(["dbsync"], root.params, group=True)),
        _section("DESCRIPTION", description),
        _section("COMMANDS", _commands_list(["dbsync"], root.commands)),
        _section("GLOBAL OPTIONS", _option_items(root.params)),
        _section("ENVIRONMENT", [f".TP\n{_esc(k)}\n{_esc(v)}" for k, v in ROOT_EXTRA["ENVIRONMENT"]]),
        _section("FILES", [f".TP\n{_esc(k)}\n{_esc(v)}" for k, v in ROOT_EXTRA["FILES"]]),
        _section("EXIT STATUS", [f".TP\n{code}\n{_esc(EXIT_TEXT[code])}" for code in codes]
                 + [".PP\n\\fBdbsync status\\fR exits 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN instead."]),
        _examples_section(""),
        _see_also([f"dbsync-{name}" for name, sub in root.commands.items() if not getattr(sub, "hidden", False)]),
    ]
    return _join(parts)


def pages(app: Any = None) -> dict[str, str]:
    """File name → roff text for every page, from the command tree of `app` (default: the dbsync app)."""
    import typer.main

    if app is None:
        from dbsync_cli.cli.app import command

        root: Any = command()  # the tree `dbsync` runs (flags without value placeholders)
    else:
        root = typer.main.get_command(app)  # a click Group (typer apps with subcommands)
    out = {"dbsync.1": _root_page(root)}

    def walk(words: list[str], command: Any) -> None:
        name = "-".join(words) + ".1"
        commands = getattr(command, "commands", None)
        if commands is not None:
            out[name] = _group_page(words, command)
            for sub_name, sub in commands.items():
                if not getattr(sub, "hidden", False):
                    walk([*words, sub_name], sub)
        else:
            out[name] = _command_page(words, command)

    for name, command in root.commands.items():
        if not getattr(command, "hidden", False):
            walk(["dbsync", name], command)
    return dict(sorted(out.items()))


def command_paths(app: Any = None) -> list[list[str]]:
    """Every command and group below the root, as argument lists (for tests that walk the tree)."""
    import typer.main

    if app is None:
        from dbsync_cli.cli import app as app_module

        app = app_module.app
    found: list[list[str]] = []

    def walk(words: list[str], command: Any) -> None:
        found.append(words)
        for sub_name, sub in (getattr(command, "commands", None) or {}).items():
            walk([*words, sub_name], sub)

    root: Any = typer.main.get_command(app)  # a click Group
    for name, command in root.commands.items():
        walk([name], command)
    return found
