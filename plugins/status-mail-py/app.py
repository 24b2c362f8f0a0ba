"""status-mail: mails the admin when a probe job's status changes. An example policy in
Python, built with componentize-py against the `policy` world in wit/.

Config (the `[policy.config]` table): `product` (the subject's prefix, default "warden");
`note_query`, a read-only SQL statement whose first cell goes into the mail (needs the
"sql:read" grant; without it the call fails inside the policy and is logged); `spin =
"true"` loops forever, to see warden stop a policy at its deadline.
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import config, sql, state, types


def status_name(status: types.Status) -> str:
    return status.name.lower()


def first_cell(rows: list) -> str:
    if not rows or not rows[0]:
        return "no rows"
    cell = rows[0][0]
    return "NULL" if isinstance(cell, sql.Cell_Null) else str(cell.value)


class WitWorld(wit_world.WitWorld):
    def evaluate(self, event: types.Event) -> list[types.Action]:
        if not isinstance(event, types.Event_Snapshot):
            return []
        if config.get("spin") == "true":
            while True:
                pass
        snap = event.value
        now = status_name(snap.status)
        before = state.get("last_status")
        state.set("last_status", now)
        if before is None or before == now:
            return []
        changes = int(state.get("changes") or "0") + 1
        state.set("changes", str(changes))
        product = config.get("product") or "warden"
        body = f"{snap.job}: {before} -> {now} (change {changes})"
        actions: list[types.Action] = []
        query = config.get("note_query")
        if query:
            try:
                body += f"\n{query}: {first_cell(sql.query(query))}"
            except Err as e:
                message = f"note_query failed: {e.value}"
                actions.append(types.Action_Log(types.LogEntry(types.Level.WARN, message)))
        actions.append(types.Action_EmailAdmin(types.Email(f"{product} {snap.job}: {now}", body)))
        return actions
