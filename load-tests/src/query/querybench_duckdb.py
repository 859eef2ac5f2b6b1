"""DuckDB side of meterflow-querybench (run by the binary, not by hand).

Usage: python -c <this script> <request.json>

The request names the Parquet files of one Delta snapshot, the SQL to time with its parameters,
the view name the SQL reads and the one-column list table it selects customers with. Each timed run opens a fresh in-memory connection, creates the view over
read_parquet([files]) (the exact file list of the snapshot: DuckDB's delta extension needs a
download, and globbing the folder would also read files the log has removed), runs the SQL and
fetches the whole result as Arrow. Commands come one per line on stdin, answers go one JSON
object per line on stdout:

  run          -> {"ms": <wall time of connect + view + list + query + fetch>, "rows": <rows>}
  dump <path>  -> writes the last result as JSON lines of strings (decimals in plain notation,
                  null as ""), then {"dumped": <rows>}
  quit (or EOF)
"""

import json
import sys
import time
from decimal import Decimal

import duckdb


def cell(v):
    if v is None:
        return ""
    if isinstance(v, Decimal):
        return format(v, "f")
    return str(v)


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        req = json.load(f)
    files = ", ".join("'" + p.replace("'", "''") + "'" for p in req["files"])
    view = f"CREATE VIEW {req['view']} AS SELECT * FROM read_parquet([{files}])"
    sql = req["sql"]
    params = req.get("params", [])
    lst = req.get("list")
    threads = req.get("threads")

    def connect():
        con = duckdb.connect(":memory:")
        # The progress bar would write to stdout, which carries the answers.
        con.execute("SET enable_progress_bar = false")
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        return con

    probe = connect()
    ready = {
        "ready": True,
        "version": duckdb.__version__,
        "threads": int(probe.execute("SELECT current_setting('threads')").fetchone()[0]),
    }
    probe.close()
    print(json.dumps(ready), flush=True)

    last = None
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            start = time.perf_counter()
            con = connect()
            con.execute(view)
            if lst:
                con.execute(
                    f"CREATE TABLE {lst['table']} AS SELECT unnest(?::VARCHAR[]) AS {lst['column']}",
                    [lst["values"]],
                )
            table = con.sql(sql, params=params).to_arrow_table()
            ms = (time.perf_counter() - start) * 1000.0
            con.close()
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
    main()
