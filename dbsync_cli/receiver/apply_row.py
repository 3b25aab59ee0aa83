"""The per-row path of apply: one message resolved, judged and written alone (whatever the set path leaves, and
everything replayed message by message after a failed batch)."""

from __future__ import annotations

import logging
from typing import Any

from dbsync_cli import complex_obs
from dbsync_cli.openmrs import SyncedTable
from dbsync_cli.openmrs.rules import REST_RESOURCES
from dbsync_cli.receiver import adopt, complex_files, reasons, state, trust
from dbsync_cli.receiver.apply_judge import Judging
from dbsync_cli.receiver.apply_park import Parking
from dbsync_cli.receiver.batch import Batch, Outcome
from dbsync_cli.receiver.conflict import Verdict
from dbsync_cli.receiver.guard import SourcePosition
from dbsync_cli.receiver.message import Parsed, entity_key
from dbsync_cli.receiver.resolve import (
    DeferredKey,
    HeldRow,
    MessageError,
    MissingReference,
)
from dbsync_cli.receiver.retry_rules import PERMANENT, reference_cause
from dbsync_cli.sql import columns, join, placeholders, quote, sql
from dbsync_cli.wire import DELETE, READ

log = logging.getLogger("dbsync.apply")


class RowApply(Judging, Parking):
    """One message applied alone: its references resolved, judged, written (the per-row path)."""

    # ---- one message ---------------------------------------------------------------------------------------
    def _one(self, cur: Any, item: Parsed, batch: Batch, *, from_queue: bool = False, force: bool = False,
             only: list[str] | None = None) -> Outcome:
        if item.error is not None:
            return self._park(cur, item, item.error, batch, kind="error", cause=state.central_cause(item.error))
        message = item.message
        assert message is not None and item.table is not None
        table = item.table
        site = self.sites.get(message["site"])
        if site is None or site.disabled:
            why = "is not registered" if site is None else "is disabled"
            return self._park(cur, item, reasons.reason("site_unknown", site=message["site"], why=why), batch,
                              queue_kind=PERMANENT, cause=state.site_cause(message["site"]))
        refused = trust.refused_sender(site, item.broker_user)
        if refused is not None:
            return self._park(cur, item, refused, batch, kind="error", cause=state.site_cause(site.identifier))
        ek = entity_key(self.model, table, message["uuid"])
        if ek in self.blocked and not from_queue:
            return self._park(cur, item, reasons.reason("waiting_behind", entity=ek), batch, kind="waiting")
        try:
            outcome = self._change(cur, item, table, batch, force=force, only=only)
        except MissingReference as exc:
            return self._park(cur, item, exc.args[0] if exc.args else str(exc), batch,  # a Reason keeps its code
                              cause=reference_cause(exc.uuid))
        except MessageError as exc:
            why = exc.args[0] if exc.args else str(exc)  # a Reason keeps its code
            return self._park(cur, item, why, batch, kind="error", cause=state.central_cause(why))
        except complex_files.FileWaiting as exc:  # its file is not in central's folder yet
            return self._park(cur, item, exc.why, batch, cause=exc.cause)
        if outcome.outcome == "applied":
            count, _ = batch.sites.get(site.identifier, (0, ""))
            batch.sites[site.identifier] = (count + 1, item.message_id)
            if self.settings.rest_enabled and table.name in REST_RESOURCES:
                resource, sub = REST_RESOURCES[table.name]
                batch.rest.append((resource, sub, message["uuid"]))
        batch.handled.append(item.message_id)
        return outcome

    def _change(self, cur: Any, item: Parsed, table: SyncedTable, batch: Batch, *, force: bool = False,
                only: list[str] | None = None) -> Outcome:
        """Insert, update or delete one entity; `force` skips the conflict rule, `only` limits the columns."""
        message = item.message
        assert message is not None
        uuid = message["uuid"]
        ident = table.identity.table
        held_parent: DeferredKey | None = None
        if self.inserts.held and (ident, uuid) in self.inserts.held:
            if table.is_subclass and message["op"] != DELETE and not self.inserts.holds_row(table.name, uuid):
                held_parent = self.inserts.rows.get((ident, uuid))  # a new subclass row of a new parent row
            if held_parent is None:
                self.inserts.flush(cur, batch)  # this message reads or changes a row that is still held back
        if not force:
            self._check_owner(cur, table, uuid, message["site"], batch)
        position = SourcePosition.of(message)
        if position is not None and not force:
            last = batch.positions.get((table.name, uuid)) or self._synced_entry(cur, table.name, uuid).position
            if last is not None and position.older_than(last):
                batch.skip(message["site"], "stale", item.message_id, table.name)
                return Outcome(item.message_id, "stale", table.name, uuid,
                               reasons.reason("older_position", position=position, last=last))
        key = held_parent or self.ids.lookup(cur, ident, uuid)
        current = self.rows.current(table, key) if key is not None and held_parent is None else None
        if current is not None and not force:
            self._check_case(cur, item, table, current, batch)
        if message["op"] == DELETE:
            if current is None:
                self._applied_at(cur, batch, table, uuid, position, message["site"])
                return Outcome(item.message_id, "applied", table.name, uuid, reasons.reason("already_absent"))
            judged = self._refused(cur, item, table, key, current, None, batch, force)
            if judged is not None:
                return judged
            cur.execute(self.statements.get(("delete", table.name), lambda: sql(
                "DELETE FROM {} WHERE {} = %s", quote(table.name), quote(table.key))), (key,))
            if self.settings.complex_obs and table.name == complex_obs.TABLE:  # OpenMRS's purgeObs removes the file
                name = complex_obs.file_name(current.get(complex_obs.COLUMN))
                if name is not None and complex_obs.refusal(name) is None:
                    complex_files.purge(cur, self.s, message["site"], name)
            if not table.is_subclass:
                self.ids.forget(ident, uuid)
            batch.touched.pop((table.name, key), None)
            self._applied_at(cur, batch, table, uuid, position, message["site"])
            return Outcome(item.message_id, "applied", table.name, uuid)
        data = message["data"] or {}
        if self.settings.complex_obs and table.name == complex_obs.TABLE:
            bad_name = complex_files.check_obs(cur, self.s, message["site"], uuid, data, current)
            if bad_name is not None:
                raise MessageError(bad_name)
        if only is not None:
            unknown = sorted(set(only) - set(data))
            if unknown:
                raise MessageError(reasons.reason("merge_unknown", columns=", ".join(unknown), table=table.name))
            data = {c: data[c] for c in only}
        values = self._values(cur, item, table, data, batch, defer=current is None)
        if key is None:  # the entity (or its parent) may have become a placeholder while converting
            key = self.ids.lookup(cur, ident, uuid)
            if key is None and table.is_subclass:
                key = self._resolve_parent(cur, ident, uuid, batch)
            current = self.rows.current(table, key) if key is not None and not isinstance(key, DeferredKey) \
                else None
            if current is not None and any(isinstance(v, DeferredKey) for v in values.values()):
                values = self._values(cur, item, table, data, batch, defer=False)  # an update needs real keys
        if current is not None:
            if not force and message["op"] == READ and (table.name, uuid) not in batch.ours:
                adopted = self._adopt(cur, item, table, key, current, values, position, batch)
                if adopted is not None:
                    return adopted
            judged = self._refused(cur, item, table, key, current, values, batch, force)
            if judged is not None:
                return judged
            if values:
                cur.execute(self.statements.get(("update", table.name, tuple(values)), lambda: sql(
                    "UPDATE {} SET {} WHERE {} = %s", quote(table.name), join(sql("{} = %s", quote(c)) for c in values),
                    quote(table.key))), [*values.values(), key])
        else:
            row = dict(values)
            if table.is_subclass:
                row[table.key] = key
            else:
                row["uuid"] = uuid
            if self._grouping:
                self.inserts.hold(cur, batch, table, row, uuid, message["site"], key, 2 * len(item.raw) + 16 * len(row))
                batch.owners.setdefault((table.name, uuid), message["site"])
                batch.ours.add((table.name, uuid))
                self._applied_at(cur, batch, table, uuid, position)
                return Outcome(item.message_id, "applied", table.name, uuid)
            cur.execute(self.statements.get(("insert", table.name, tuple(row)), lambda: sql(
                "INSERT INTO {} ({}) VALUES ({})", quote(table.name), columns(row), placeholders(len(row)))),
                list(row.values()))
            if not table.is_subclass:
                key = cur.lastrowid
                self.ids.remember(ident, uuid, key)
        batch.touched[(table.name, key)] = (uuid, message["site"])
        batch.owners.setdefault((table.name, uuid), self._synced_entry(cur, table.name, uuid).owner or message["site"])
        batch.ours.add((table.name, uuid))
        self._applied_at(cur, batch, table, uuid, position)
        return Outcome(item.message_id, "applied", table.name, uuid)

    def _refused(self, cur: Any, item: Parsed, table: SyncedTable, key: Any, current: dict[str, Any],
                 values: dict[str, Any] | None, batch: Batch, force: bool) -> Outcome | None:
        """The judgement of a change (`values`; None: a delete) to central's row `current`: its conflict or its
        skip, or None when it is to be written (`force`: no judgement)."""
        message = item.message
        assert message is not None
        uuid = message["uuid"]
        verdict = Verdict() if force else self._judge(cur, table, uuid, current, message, values, batch)
        self._sent_as_central(cur, table, key, message["site"], verdict)
        if verdict.park:
            return self._conflict(cur, item, verdict, current, batch)
        if verdict.skip:
            return self._skipped(item, verdict, batch)
        return None

    def _values(self, cur: Any, item: Parsed, table: SyncedTable, data: dict[str, Any], batch: Batch, *,
                defer: bool) -> dict[str, Any]:
        """The message's central values; a new row held back (`defer`) may reference held rows by DeferredKey,
        any other statement needs them written first."""
        message = item.message or {}
        if not self.inserts.held:
            return self.convert.values(cur, table, data, message["site"])
        if not defer or not self._grouping:
            if self.inserts.holds_any(item.refs if item.refs is not None else self.convert.references(table, data)):
                self.inserts.flush(cur, batch)
            return self.convert.values(cur, table, data, message["site"])
        self.convert.held = self.inserts.deferred
        try:
            return self.convert.values(cur, table, data, message["site"])
        except HeldRow:
            self.convert.held = None
            self.inserts.flush(cur, batch)
            return self.convert.values(cur, table, data, message["site"])
        finally:
            self.convert.held = None

    def _resolve_parent(self, cur: Any, ident: str, uuid: str, batch: Batch) -> Any:
        """Key of a new subclass row: its parent's (a placeholder parent when none exists)."""
        if self._grouping and self.inserts.held:
            self.convert.held = self.inserts.deferred
            try:
                return self.convert.resolve(cur, ident, uuid, allow_placeholder=True)
            except HeldRow:
                self.inserts.flush(cur, batch)
            finally:
                self.convert.held = None
        return self.convert.resolve(cur, ident, uuid, allow_placeholder=True)

    def _adopt(self, cur: Any, item: Parsed, table: SyncedTable, key: Any, current: dict[str, Any],
               values: dict[str, Any], position: SourcePosition | None, batch: Batch) -> Outcome | None:
        """A snapshot row of a site registered with --adopt (receiver/adopt.py); None: judged as any other."""
        message = item.message or {}
        site, uuid = self.sites.get(message["site"]), message["uuid"]
        if site is None or not site.adopt:
            return None
        if self._built_ins is None:
            self._built_ins = adopt.built_in_uuids(cur)
        synced = self._synced_entry(cur, table.name, uuid)
        if not adopt.candidate(table, uuid, current, written_before=synced.owner is not None,
                               built_in=self._built_ins) or self.held_rows.holds(cur, site, table, key):
            return None  # central's own (held before the site's data was loaded, or sent by another site as such)
        differing = adopt.differences(table, current, values, site.identifier)
        if differing:
            shown = ", ".join(differing[:8]) + (" …" if len(differing) > 8 else "")
            return self._conflict(cur, item, Verdict(park=True, reason=reasons.reason(
                "adopting", site=site.identifier, columns=shown)),
                                  current, batch)
        suffixed = adopt.central_form(table, current, values)
        if suffixed:  # central's form of the site's username / provider identifier: its next edit is an update
            cur.execute(self.statements.get(("update", table.name, tuple(suffixed)), lambda: sql(
                "UPDATE {} SET {} WHERE {} = %s", quote(table.name),
                join(sql("{} = %s", quote(c)) for c in suffixed), quote(table.key))), [*suffixed.values(), key])
        batch.touched[(table.name, key)] = (uuid, site.identifier)
        batch.owners[(table.name, uuid)] = site.identifier
        batch.ours.add((table.name, uuid))
        self._applied_at(cur, batch, table, uuid, position)
        batch.skip(site.identifier, adopt.ADOPTED, item.message_id, table.name)
        return Outcome(item.message_id, adopt.ADOPTED, table.name, uuid, reasons.reason("adopted"))

    def _sent_as_central(self, cur: Any, table: SyncedTable, key: Any, sender: str, verdict: Verdict) -> None:
        """A site sent a row judged central's own: no adopting site may take it from now on (adopt_held.py)."""
        if getattr(verdict.reason, "code", None) != "central_own":
            return
        for site in self.sites.values():
            if site.adopt and site.identifier != sender:
                self.held_rows.add(cur, site, table, key)
