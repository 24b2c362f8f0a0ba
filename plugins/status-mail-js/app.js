// status-mail: mails the admin when a probe job's status changes. An example policy in
// JavaScript, built with componentize-js against the `policy` world in wit/.
//
// Config (the `[policy.config]` table): `product` (the subject's prefix, default
// "warden"); `note_query`, a read-only SQL statement whose first cell goes into the mail
// (needs the "sql:read" grant; without it the call fails inside the policy and is logged);
// `spin = "true"` loops forever, to see warden stop a policy at its deadline.

import { get as configGet } from "warden:policy/config@0.1.0";
import { query } from "warden:policy/sql@0.1.0";
import { get as stateGet, set as stateSet } from "warden:policy/state@0.1.0";

function firstCell(rows) {
  if (rows.length === 0 || rows[0].length === 0) return "no rows";
  const cell = rows[0][0];
  return cell.tag === "null" ? "NULL" : String(cell.val);
}

export function evaluate(event) {
  if (event.tag !== "snapshot") return [];
  if (configGet("spin") === "true") {
    for (;;) {}
  }
  const snap = event.val;
  const now = snap.status;
  const before = stateGet("last_status");
  stateSet("last_status", now);
  if (before === undefined || before === now) return [];
  const changes = Number(stateGet("changes") ?? "0") + 1;
  stateSet("changes", String(changes));
  const product = configGet("product") ?? "warden";
  let body = `${snap.job}: ${before} -> ${now} (change ${changes})`;
  const actions = [];
  const sql = configGet("note_query");
  if (sql !== undefined) {
    try {
      body += `\n${sql}: ${firstCell(query(sql))}`;
    } catch (e) {
      const message = `note_query failed: ${e.payload ?? e}`;
      actions.push({ tag: "log", val: { level: "warn", message } });
    }
  }
  actions.push({ tag: "email-admin", val: { subject: `${product} ${snap.job}: ${now}`, body } });
  return actions;
}
