"""chdb side of meterflow-querybench: ClickHouse's engine in process (run by the binary, not by hand).

Usage: python -c <this script> <request.json>

The same line protocol as querybench_duckdb.py. The request names the Parquet files of one Delta
snapshot, the invoice SQL already translated to ClickHouse's dialect (load-tests/src/query/chdb.rs
says how and why) with its named parameters, the view name the SQL reads and the one-column list
table it selects customers with. Each timed run opens a fresh in-memory chdb session, creates
the view over file('<folder>/{<name>,<name>,...}', Parquet) (the exact file list of the snapshot:
ClickHouse's file() takes one path pattern, and a brace list of names is how it lists files; a
glob over the folder would also read files the log has removed), creates the list table (Memory
engine, the ids inserted as string literals), runs the SQL and fetches the whole result as
Arrow. Before it answers "ready" it checks, untimed, that the pattern matches exactly the
requested files (ClickHouse's _path column) and that the money columns are read as decimals.
Commands come one per line on stdin, answers go one JSON object per line on stdout:

  run          -> {"ms": <wall time of session + view + list + query + fetch>, "rows": <rows>}
  dump <path>  -> writes the last result as JSON lines of strings (decimals in plain notation,
                  null as ""), then {"dumped": <rows>}
  quit (or EOF)
"""

import json
import os
import sys
import time
from decimal import Decimal

import chdb
from chdb import session as chs

# Characters with a meaning in a ClickHouse path pattern. A file list is written as one brace
# list, so a path holding any of them would not name itself; Delta's own file names never do.
GLOB_CHARS = set("*?{},")


def cell(v):
    if v is None:
        return ""
    if isinstance(v, Decimal):
        return format(v, "f")
    if isinstance(v, bytes):
        return v.decode("utf-8")
    return str(v)


def literal(s):
    """A ClickHouse string literal."""
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def pattern(files):
    """One file() path pattern that matches exactly `files` (all in one folder)."""
    if not files:
        raise ValueError("no files to read")
    folders = {os.path.dirname(f) for f in files}
    if len(folders) != 1:
        raise ValueError(f"the files are in {len(folders)} folders; this runner reads one folder")
    for f in files:
        if not os.path.isabs(f) or GLOB_CHARS & set(f) or ".." in f:
            raise ValueError(f"cannot name {f!r} in a ClickHouse path pattern")
    names = sorted(os.path.basename(f) for f in files)
    if len(names) == 1:
        return files[0]
    return os.path.join(folders.pop(), "{" + ",".join(names) + "}")


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        req = json.load(f)
    files = req["files"]
    source = f"file({literal(pattern(files))}, Parquet)"
    view = f"CREATE VIEW {req['view']} AS SELECT * FROM {source}"
    sql = req["sql"]
    params = req.get("params") or {}
    lst = req.get("list")
    lst_sql = []
    if lst:
        lst_sql.append(f"CREATE TABLE {lst['table']} ({lst['column']} String) ENGINE = Memory")
        if lst["values"]:
            values = ", ".join("(" + literal(v) + ")" for v in lst["values"])
            lst_sql.append(f"INSERT INTO {lst['table']} VALUES {values}")
    threads = req.get("threads")
    # Settings of the session: strings come out of Arrow as strings (not binary), and the
    # thread count when one is asked for (ClickHouse's default: one per core).
    conn = ":memory:?output_format_arrow_string_as_string=1"
    if threads:
        conn += f"&max_threads={int(threads)}"

    probe = chs.Session(conn)
    # Untimed checks: the exact files, and exact money.
    read = probe.query(f"SELECT _path AS path, count() AS n FROM {source} GROUP BY path", "ArrowTable")
    seen = {os.path.realpath(cell(r["path"])): int(r["n"]) for r in read.to_pylist()}
    wanted = {os.path.realpath(f) for f in files}
    if set(seen) != wanted:
        missing = sorted(wanted - set(seen))[:3]
        extra = sorted(set(seen) - wanted)[:3]
        raise ValueError(f"file() read other files than the snapshot's: missing {missing}, extra {extra}")
    types = {r["name"]: cell(r["type"]) for r in probe.query(f"DESCRIBE TABLE {source}", "ArrowTable").to_pylist()}
    for col in ("quantity", "amount"):
        if "Decimal" not in types.get(col, ""):
            raise ValueError(f"ClickHouse reads {col} as {types.get(col)!r}, not as an exact decimal")
    setting = probe.query("SELECT value FROM system.settings WHERE name = 'max_threads'", "ArrowTable")
    max_threads = "".join(ch for ch in cell(setting.column(0)[0].as_py()) if ch.isdigit())
    engine = cell(probe.query("SELECT version() AS v", "ArrowTable").column(0)[0].as_py())
    probe.close()
    ready = {
        "ready": True,
        "version": f"{chdb.__version__} (ClickHouse {engine})",
        "threads": int(max_threads or 0),
        "files": len(seen),
        "rows": sum(seen.values()),
        "types": {c: types.get(c) for c in ("customer_id", "quantity", "amount", "event_count", "first_seq")},
    }
    print(json.dumps(ready), flush=True)

    last = None
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            start = time.perf_counter()
            sess = chs.Session(conn)
            sess.query(view)
            for q in lst_sql:
                sess.query(q)
            table = sess.query(sql, "ArrowTable", params=params)
            ms = (time.perf_counter() - start) * 1000.0
            sess.close()
            last = table
            print(json.dumps({"ms": ms, "rows": table.num_rows}), flush=True)
        elif cmd.startswith("dump "):
            if last is None:
                print(json.dumps({"error": "nothing run yet"}), flush=True)
                continue
            names = last.column_names
            with open(cmd[5:], "w", encoding="utf-8") as out:
                for row in last.to_pylist():
                    out.write(json.dumps([cell(row[n]) for n in names]) + "\n")
            print(json.dumps({"dumped": last.num_rows}), flush=True)
        elif cmd in ("quit", ""):
            break
        else:
            print(json.dumps({"error": f"unknown command {cmd!r}"}), flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - every failure goes to the binary as one answer
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        sys.exit(1)
