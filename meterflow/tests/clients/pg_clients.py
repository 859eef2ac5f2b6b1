#!/usr/bin/env python3
"""psycopg 3 (with its bundled libpq) against meterflow's Postgres-wire SQL endpoint.

    python pg_clients.py --dsn DSN --customer C --meter M --expect-quantity Q
    python pg_clients.py --dsn DSN --expect-denied [--as-given]

DSN is a libpq connection string or URI, e.g.
`host=127.0.0.1 port=5433 dbname=meterflow user=<key id> password=<whole key> sslmode=disable`.

Checks (every one must pass; a libpq protocol trace proves which protocol each one used):
  connect         SCRAM-SHA-256 login with the key (libpq's `require_auth=scram-sha-256`, unless
                  the DSN sets require_auth itself);
  simple          a query without parameters in autocommit goes as one simple-protocol `Query`,
                  and a `ClientCursor` query with client-side bound parameters does too;
  extended        `SELECT SUM(quantity), MIN(window_start) ... WHERE customer_id = %s AND
                  meter = %s` goes as Parse/Bind/Describe/Execute with the parameters;
                  `SUM(quantity)` arrives as `decimal.Decimal` equal to Q exactly and
                  `window_start` as `datetime`; the same again as a named prepared statement
                  (`prepare=True`: Parse "_pg3_0" once, then Bind only);
  view            `window_totals` answers for the customer, its quantities as `Decimal`;
  writes_refused  `CREATE TABLE`, `INSERT` and `COPY ... FROM STDIN` each fail with a server
                  error (an ErrorResponse, the connection stays up) and `SELECT 1` still works;
  timeout         a parameterised (extended-protocol) query over ten billion generated rows
                  stops with SQLSTATE 57014 at the server's `[sql] timeout_s`, and the
                  connection stays usable;
  transaction     the default (non-autocommit) mode: psycopg sends `BEGIN` before the first
                  query, `COMMIT` works; a refused write inside a transaction is followed by
                  `ROLLBACK` (psycopg then sends `DEALLOCATE ALL` when it had prepared
                  statements) and the connection is usable again.
With --expect-denied it only connects, with the DSN's password changed in its last character
(or exactly as given with --as-given, e.g. for a revoked key), and passes when the server refuses
with an authentication error (not a connection error).

Prints one JSON line (`ok`, `checks` with each check's findings, `error`); exits 0 when every
check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import tempfile
from decimal import Decimal
from typing import Any, Callable

try:
    import psycopg
    from psycopg import pq
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
except ImportError as e:  # pragma: no cover - reported as a failure
    print(json.dumps({"ok": False, "error": f"psycopg is not installed ({e}); run scripts/tools.sh"}))
    sys.exit(1)

AUTH_FAILURE = re.compile(r"authenticat|password|28P01|28000", re.IGNORECASE)


class Tracer:
    """The libpq protocol trace of a connection, read back message by message."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.file = tempfile.TemporaryFile(mode="w+")
        conn.pgconn.trace(self.file.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        self.pos = 0

    def take(self) -> list[str]:
        """Messages since the last call, as `F Query "SELECT 1"` / `B ReadyForQuery T` lines."""
        self.file.flush()
        self.file.seek(self.pos)
        text = self.file.read()
        self.pos = self.file.tell()
        out = []
        for line in text.splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                out.append(" ".join([parts[0], parts[2], *(p.strip() for p in parts[3:])]).strip())
        return out

    def close(self) -> None:
        try:
            self.conn.pgconn.untrace()
        except Exception:  # noqa: BLE001
            pass
        self.file.close()


def frontend(msgs: list[str], kind: str) -> list[str]:
    return [m for m in msgs if m.startswith(f"F {kind}")]


def connect(dsn: str, **kw: Any) -> psycopg.Connection:
    params = conninfo_to_dict(dsn)
    params.setdefault("connect_timeout", "10")
    # The endpoint must authenticate with SCRAM-SHA-256: libpq (>= 16; psycopg[binary] bundles a
    # newer one) refuses any other method, such as a cleartext password over a plain connection.
    if pq.version() >= 160000:
        params.setdefault("require_auth", "scram-sha-256")
    return psycopg.connect(make_conninfo(**params), **kw)


def sql_error(e: psycopg.Error) -> dict[str, Any]:
    return {"class": type(e).__name__, "sqlstate": e.sqlstate, "message": str(e).strip().splitlines()[0][:300]}


def alive(conn: psycopg.Connection) -> bool:
    try:
        row = conn.execute("SELECT 1").fetchone()
        return not conn.closed and row is not None and row[0] == 1
    except psycopg.Error:
        return False


def expect_denied(dsn: str, as_given: bool) -> int:
    params = conninfo_to_dict(dsn)
    if not as_given:
        pw = params.get("password") or os.environ.get("PGPASSWORD") or ""
        params["password"] = (pw[:-1] + ("0" if pw[-1:] != "0" else "1")) if pw else "wrong-password"
    params.setdefault("connect_timeout", "10")
    report: dict[str, Any] = {"ok": False, "mode": "expect-denied", "user": params.get("user")}
    try:
        conn = psycopg.connect(make_conninfo(**params))
    except psycopg.OperationalError as e:
        msg = str(e).strip()
        report["error_seen"] = {"class": type(e).__name__, "sqlstate": e.sqlstate, "message": msg[:500]}
        # libpq puts the server's FATAL (e.g. `password authentication failed for user "..."`,
        # SQLSTATE 28P01) in the message; a refused TCP connection is not an authentication error.
        if AUTH_FAILURE.search(msg) and "Connection refused" not in msg:
            report["ok"] = True
            print(json.dumps(report))
            return 0
        report["error"] = "the connection failed, but not with an authentication error"
        print(json.dumps(report))
        print(f"pg_clients: FAIL: {report['error']}: {msg}", file=sys.stderr)
        return 1
    conn.close()
    report["error"] = "connected with a wrong password"
    print(json.dumps(report))
    print(f"pg_clients: FAIL: {report['error']}", file=sys.stderr)
    return 1


def run_checks(dsn: str, customer: str, meter: str, expect_q: Decimal) -> int:
    report: dict[str, Any] = {"ok": False, "checks": {}}
    checks: dict[str, dict[str, Any]] = report["checks"]
    failures: list[str] = []

    def check(name: str, fn: Callable[[dict[str, Any]], None]) -> None:
        found: dict[str, Any] = {"ok": False}
        checks[name] = found
        try:
            fn(found)
            found["ok"] = not found.get("problems")
        except psycopg.Error as e:
            found["exception"] = sql_error(e)
        except Exception as e:  # noqa: BLE001
            found["exception"] = {"class": type(e).__name__, "message": str(e)[:300]}
        if not found["ok"]:
            failures.append(name)

    def problem(found: dict[str, Any], what: str) -> None:
        found.setdefault("problems", []).append(what)

    q_sum = (
        "SELECT SUM(quantity) AS quantity, MIN(window_start) AS first_window, COUNT(*) AS row_count "
        "FROM usage_summaries WHERE customer_id = %s AND meter = %s"
    )

    # -- connect, autocommit --------------------------------------------------------------------
    try:
        conn = connect(dsn, autocommit=True)
    except psycopg.Error as e:
        report["error"] = f"cannot connect: {str(e).strip()}"
        print(json.dumps(report, default=str))
        print(f"pg_clients: FAIL: {report['error']}", file=sys.stderr)
        return 1
    tracer = Tracer(conn)
    info = conn.info
    checks["connect"] = {
        "ok": bool(conn.pgconn.used_password),
        "used_password": bool(conn.pgconn.used_password),
        "require_auth": conninfo_to_dict(conn.info.dsn).get("require_auth"),
        "server_version": info.parameter_status("server_version"),
        "client_encoding": info.parameter_status("client_encoding"),
        "standard_conforming_strings": info.parameter_status("standard_conforming_strings"),
        "DateStyle": info.parameter_status("DateStyle"),
        "TimeZone": info.parameter_status("TimeZone"),
        "ssl_in_use": conn.pgconn.ssl_in_use,
    }
    if not checks["connect"]["ok"]:
        failures.append("connect")

    def simple(found: dict[str, Any]) -> None:
        tracer.take()
        cur = conn.execute(
            f"SELECT customer_id, meter, quantity, window_start FROM usage_summaries "
            f"WHERE customer_id = '{customer.replace(chr(39), chr(39) * 2)}' ORDER BY window_start LIMIT 5",
            prepare=False,
        )
        rows = cur.fetchall()
        msgs = tracer.take()
        found["rows"] = len(rows)
        found["columns"] = [d.name for d in cur.description or []]
        if not frontend(msgs, "Query") or frontend(msgs, "Parse"):
            problem(found, f"not the simple protocol: {frontend(msgs, '')}")
        if not rows:
            problem(found, f"no usage_summaries rows for {customer!r}")
        # Client-side binding (ClientCursor): parameters quoted by psycopg, sent as a simple Query.
        with psycopg.ClientCursor(conn) as ccur:
            ccur.execute(q_sum, (customer, meter))
            crow = ccur.fetchone()
        msgs = tracer.take()
        found["client_cursor_quantity"] = str(crow[0]) if crow else None
        if not frontend(msgs, "Query") or frontend(msgs, "Parse"):
            problem(found, f"ClientCursor not on the simple protocol: {frontend(msgs, '')}")
        if crow is None or crow[0] != expect_q:
            problem(found, f"ClientCursor SUM(quantity) {crow and crow[0]!r} != {expect_q}")

    check("simple", simple)

    def extended(found: dict[str, Any]) -> None:
        tracer.take()
        cur = conn.execute(q_sum, (customer, meter))
        row = cur.fetchone()
        msgs = tracer.take()
        if not frontend(msgs, "Parse") or not frontend(msgs, "Bind") or frontend(msgs, "Query"):
            problem(found, f"not the extended protocol: {frontend(msgs, '')}")
        found["oids"] = {d.name: d.type_code for d in cur.description or []}
        if row is None:
            problem(found, "no row")
            return
        quantity, first_window, n = row
        found.update(
            quantity=str(quantity),
            quantity_type=type(quantity).__name__,
            first_window=str(first_window),
            first_window_type=type(first_window).__name__,
            rows=n,
        )
        if not isinstance(quantity, Decimal):
            problem(found, f"SUM(quantity) is {type(quantity).__name__}, not Decimal")
        elif quantity != expect_q:
            problem(found, f"SUM(quantity) = {quantity} != expected {expect_q}")
        if not isinstance(first_window, dt.datetime):
            problem(found, f"window_start is {type(first_window).__name__}, not datetime")
        # Named prepared statement: Parse "_pg3_N" once, then Bind/Execute only.
        for _ in range(2):
            prow = conn.execute(q_sum, (customer, meter), prepare=True).fetchone()
            if prow is None or prow[0] != expect_q:
                problem(found, f"prepared statement gave {prow!r}")
        msgs = tracer.take()
        named = [m for m in frontend(msgs, "Parse") if '"_pg3_' in m]
        found["prepared_parses"] = len(named)
        if len(named) != 1 or len(frontend(msgs, "Bind")) != 2:
            problem(found, f"prepared statement not parsed once and bound twice: {frontend(msgs, '')}")

    check("extended", extended)

    def binary(found: dict[str, Any]) -> None:
        # Binary result format (JDBC and others ask for it per column); psycopg's binary loaders.
        with conn.cursor(binary=True) as bcur:
            bcur.execute(q_sum, (customer, meter))
            row = bcur.fetchone()
        found["quantity"] = str(row[0]) if row else None
        if row is None or row[0] != expect_q or not isinstance(row[1], dt.datetime):
            problem(found, f"binary results gave {row!r}")

    check("binary_results", binary)

    def view(found: dict[str, Any]) -> None:
        cur = conn.execute(
            "SELECT window_start, quantity FROM window_totals WHERE customer_id = %s AND meter = %s "
            "ORDER BY window_start",
            (customer, meter),
        )
        rows = cur.fetchall()
        found["rows"] = len(rows)
        found["columns"] = [d.name for d in cur.description or []]
        if not rows:
            problem(found, "no window_totals rows")
        for ws, q in rows:
            if not isinstance(q, Decimal) or not isinstance(ws, dt.datetime):
                problem(found, f"row types {type(ws).__name__}, {type(q).__name__}")
                break

    check("view", view)

    def writes_refused(found: dict[str, Any]) -> None:
        attempts: list[tuple[str, Callable[[], None]]] = [
            ("create_table", lambda: conn.execute("CREATE TABLE meterflow_write_probe(a int)")),
            (
                "insert",
                lambda: conn.execute(
                    "INSERT INTO usage_summaries (customer_id, meter) VALUES (%s, %s)", (customer, meter)
                ),
            ),
            ("copy_from_stdin", lambda: copy_in(conn, customer, meter)),
        ]
        for name, attempt in attempts:
            entry: dict[str, Any] = {}
            found[name] = entry
            try:
                attempt()
                problem(found, f"{name} was accepted")
            except psycopg.OperationalError as e:
                entry.update(sql_error(e))
                if conn.closed:
                    problem(found, f"{name}: the connection was dropped: {e}")
                    return
            except psycopg.Error as e:
                entry.update(sql_error(e))
            entry["connection_usable"] = alive(conn)
            if not entry["connection_usable"]:
                problem(found, f"{name}: connection unusable after the refusal")
                return

    check("writes_refused", writes_refused)

    def timeout(found: dict[str, Any]) -> None:
        # Ten billion rows: far past the server's [sql] timeout_s. With a parameter the query goes
        # as Parse/Bind/Execute, whose rows stream; the limit must hold there too.
        tracer.take()
        try:
            conn.execute("SELECT COUNT(*) FROM generate_series(1, 10000000000) WHERE value > %s", (0,))
            problem(found, "a query past the time limit was answered")
        except psycopg.Error as e:
            found.update(sql_error(e))
            if e.sqlstate != "57014":
                problem(found, f"expected SQLSTATE 57014 (query_canceled), got {e.sqlstate}: {e}")
        msgs = tracer.take()
        found["protocol"] = "extended" if any(m.startswith("F Parse") for m in msgs) else "simple"
        if found["protocol"] != "extended":
            problem(found, f"the query did not go as the extended protocol: {frontend(msgs, '')}")
        found["connection_usable"] = alive(conn)
        if not found["connection_usable"]:
            problem(found, "connection unusable after the time limit")

    check("timeout", timeout)
    tracer.close()
    conn.close()

    # -- default mode: psycopg opens a transaction (BEGIN) before the first statement -----------
    def transaction(found: dict[str, Any]) -> None:
        with connect(dsn) as tconn:
            tr = Tracer(tconn)
            try:
                row = tconn.execute(q_sum, (customer, meter)).fetchone()
                msgs = tr.take()
                found["status_after_first_query"] = tconn.info.transaction_status.name
                if not any(m == 'F Query "BEGIN"' for m in msgs):
                    problem(found, f"no BEGIN sent: {frontend(msgs, '')}")
                if tconn.info.transaction_status != pq.TransactionStatus.INTRANS:
                    problem(found, f"server reports {tconn.info.transaction_status.name} after BEGIN, not INTRANS")
                if row is None or row[0] != expect_q:
                    problem(found, f"in a transaction SUM(quantity) gave {row!r}")
                tconn.commit()
                msgs = tr.take()
                found["commit_sent"] = any(m == 'F Query "COMMIT"' for m in msgs)
                found["status_after_commit"] = tconn.info.transaction_status.name
                if tconn.info.transaction_status != pq.TransactionStatus.IDLE:
                    problem(found, "not idle after COMMIT")
                # A refused write inside a transaction: the transaction fails, ROLLBACK recovers.
                tconn.execute("SELECT 1", prepare=True)  # a prepared statement: ROLLBACK then DEALLOCATE ALL
                try:
                    tconn.execute("CREATE TABLE meterflow_write_probe(a int)")
                    problem(found, "CREATE TABLE accepted in a transaction")
                except psycopg.Error as e:
                    found["write_in_transaction"] = sql_error(e)
                    found["status_after_refusal"] = tconn.info.transaction_status.name
                tconn.rollback()
                msgs = tr.take()
                found["queries_sent"] = [m[8:] for m in frontend(msgs, "Query")]
                row = tconn.execute(q_sum, (customer, meter)).fetchone()
                if row is None or row[0] != expect_q:
                    problem(found, f"after ROLLBACK SUM(quantity) gave {row!r}")
                tconn.rollback()
            finally:
                tr.close()

    check("transaction", transaction)

    report["ok"] = not failures
    if failures:
        report["error"] = f"failed checks: {', '.join(failures)}"
    print(json.dumps(report, default=str))
    if failures:
        for name in failures:
            print(f"pg_clients: FAIL {name}: {json.dumps(checks.get(name), default=str)}", file=sys.stderr)
        return 1
    return 0


def copy_in(conn: psycopg.Connection, customer: str, meter: str) -> None:
    with conn.cursor() as cur:
        with cur.copy("COPY usage_summaries (customer_id, meter) FROM STDIN") as copy:
            copy.write_row((customer, meter))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", required=True, help="libpq connection string or URI")
    ap.add_argument("--customer", help="customer_id with usage")
    ap.add_argument("--meter", help="meter with usage for the customer")
    ap.add_argument("--expect-quantity", help="exact SUM(quantity) of the customer's meter rows")
    ap.add_argument("--expect-denied", action="store_true", help="the login must fail with an authentication error")
    ap.add_argument("--as-given", action="store_true", help="with --expect-denied: use the DSN's password unchanged")
    args = ap.parse_args()
    if args.expect_denied:
        sys.exit(expect_denied(args.dsn, args.as_given))
    if not (args.customer and args.meter and args.expect_quantity):
        ap.error("--customer, --meter and --expect-quantity are required (unless --expect-denied)")
    sys.exit(run_checks(args.dsn, args.customer, args.meter, Decimal(args.expect_quantity)))


if __name__ == "__main__":
    main()
