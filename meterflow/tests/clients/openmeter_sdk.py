#!/usr/bin/env python3
"""OpenMeter's own Python SDK (`openmeter` on PyPI, used unchanged) against meterflow's HTTP API.

    python openmeter_sdk.py --url http://127.0.0.1:PORT --key KEY --subject SUBJ --type TYPE \
        --meter METER --value-property PROP [--expect N] [--hour 2026-12-07T04:00:00Z]

Through the SDK's `openmeter.Client(endpoint=URL, token=KEY)` (Bearer auth) it:
  1. ingests one CloudEvent: `client.events.ingest_event(Event)`, content type
     application/cloudevents+json, success = 204;
  2. ingests a batch: `client.events.ingest_events([Event, Event])`, content type
     application/cloudevents-batch+json, success = 204;
  3. ingests one more event as plain JSON: `client.events.ingest_events_json([Event])`,
     content type application/json, success = 204;
  4. lists the meters (`client.meters.list()`) and gets METER (`client.meters.get(METER)`);
  5. polls `client.meters.query_json(METER, from_parameter=HOUR, to=HOUR+1h, window_size="HOUR",
     subject=[SUBJ])` every 0.5 s for up to 60 s until the total of the rows equals --expect
     (default: the exact sum of what this run sent, 1.800000001 for a SUM meter);
  6. lists the meter's subjects (`client.meters.list_subjects(METER)`) and checks SUBJ is there.

Every event has a new uuid4 id, `source` "sdk-test", `time` inside one fixed hour (by default the
hour before the current one, so the window is complete), and data {PROP: "<decimal string>"}: the
values are strings because the SDK's JSON encoder turns a `decimal.Decimal` into a float.

Values: 0.1 (single) + 0.2 and 0.000000001 (batch) + 1.5 (JSON) = 1.800000001 exactly. Summed as
binary floats they give 1.8000000010000001 (0.1 + 0.2 alone gives 0.30000000000000004), so a
server that sums or prints through f64 is caught.

What was observed about the SDK's handling of numbers (openmeter 1.0.0b236, corehttp 1.0.0b7):
`MeterQueryRow.value` is typed `float`; the response is parsed by corehttp's `response.json()`
(plain `json.loads`), so a JSON number such as 1.800000001 becomes the nearest binary double, and
the model's `value` is that float. For values of up to 15 significant digits `repr(float)` gives
back the shortest decimal text, so `Decimal(str(row.value))` equals the exact value; beyond that
(e.g. 12345678901.0000000001) the SDK cannot represent it. Hence the exact check reads the raw
body through the SDK's `cls=` response hook, parsed with `json.loads(parse_float=Decimal)`, and
the SDK's float view is reported (and must also match for these values) separately.

The SDK's models are lazy (dict-backed): a response body "deserializes" even with missing or
extra fields, and fields are converted only when read. "models_ok" therefore reads every declared
attribute of every returned model (Meter, MeterQueryResult, MeterQueryRow) and records any
exception.

Prints one JSON line with what it saw; exits 0 on success, 1 with a message (on stderr and in the
JSON's "error") otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import uuid
from decimal import Decimal
from typing import Any

VALUES_SINGLE = ["0.1"]
VALUES_BATCH = ["0.2", "0.000000001"]
VALUES_JSON = ["1.5"]
POLL_EVERY_S = 0.5
POLL_FOR_S = 60.0


def fail(report: dict[str, Any], message: str) -> None:
    report["ok"] = False
    report["error"] = message
    print(json.dumps(report, default=str), flush=True)
    print(f"openmeter_sdk: FAIL: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def touch_model(obj: Any, label: str, errors: list[str]) -> None:
    """Reads every declared attribute of an SDK model (the SDK converts lazily, on access)."""
    fields = getattr(type(obj), "_attr_to_rest_field", None)
    if fields is None:
        errors.append(f"{label}: not an SDK model but {type(obj).__name__}")
        return
    for attr in fields:
        try:
            getattr(obj, attr)
        except Exception as e:  # noqa: BLE001 - any failure to convert is what we report
            errors.append(f"{label}.{attr}: {type(e).__name__}: {e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--key", required=True, help="API key mf_<12 hex>_<64 hex>")
    ap.add_argument("--subject", required=True)
    ap.add_argument("--type", required=True, help="CloudEvents type the meter consumes")
    ap.add_argument("--meter", required=True, help="meter id or slug")
    ap.add_argument("--value-property", required=True, help="data field of the value (`tokens` or `$.tokens`)")
    ap.add_argument("--expect", default=None, help="expected total of the hour (default: the sum sent by this run)")
    ap.add_argument("--hour", default=None, help="RFC 3339 start of the hour the events fall in (default: previous hour)")
    args = ap.parse_args()

    prop = args.value_property
    if prop.startswith("$."):
        prop = prop[2:]
    sent = VALUES_SINGLE + VALUES_BATCH + VALUES_JSON
    sent_sum = sum((Decimal(v) for v in sent), Decimal(0))
    expect = Decimal(args.expect) if args.expect is not None else sent_sum

    if args.hour:
        hour = dt.datetime.fromisoformat(args.hour.replace("Z", "+00:00")).astimezone(dt.timezone.utc)
    else:
        hour = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)
    hour_end = hour + dt.timedelta(hours=1)

    report: dict[str, Any] = {
        "ok": False,
        "sdk": None,
        "hour": hour.isoformat(),
        "sent": sent,
        "sent_sum": str(sent_sum),
        "float_sum_of_sent": repr(sum(float(v) for v in sent)),
        "expect": str(expect),
    }

    try:
        import openmeter
        from corehttp.exceptions import HttpResponseError
        from openmeter import Client
        from openmeter.models import Event
    except ImportError as e:
        fail(report, f"the openmeter SDK is not installed ({e}); run scripts/tools.sh")
    report["sdk"] = getattr(openmeter, "__version__", "?")

    run = uuid.uuid4().hex[:8]
    seq = iter(range(1_000_000))

    def event(value: str) -> Event:
        n = next(seq)
        return Event(
            id=f"sdk-{run}-{n}-{uuid.uuid4()}",
            source="sdk-test",
            specversion="1.0",
            type=args.type,
            subject=args.subject,
            time=hour + dt.timedelta(minutes=10 + n, seconds=n),
            data={prop: value},
        )

    model_errors: list[str] = []
    # A few retries only: the pipeline's default (10 with back-off) would outlast the poll budget.
    client = Client(endpoint=args.url.rstrip("/"), token=args.key, retry_total=3)
    step = "ingest_event"
    try:
        # 1-3: the three content types the SDK sends; each returns None on 204 and raises
        # HttpResponseError on any other status (a 200 included).
        client.events.ingest_event(event(VALUES_SINGLE[0]))
        step = "ingest_events"
        client.events.ingest_events([event(v) for v in VALUES_BATCH])
        step = "ingest_events_json"
        client.events.ingest_events_json([event(v) for v in VALUES_JSON])
        report["ingested"] = len(sent)

        # 4: the meter catalog.
        step = "meters.list"
        meters = client.meters.list()
        for i, m in enumerate(meters):
            touch_model(m, f"meters[{i}]", model_errors)
        report["meters"] = [m.slug for m in meters]
        if not any(args.meter in (m.slug, m.id) for m in meters):
            fail(report, f"meter {args.meter!r} not among the listed meters {report['meters']}")
        step = "meters.get"
        meter = client.meters.get(args.meter)
        touch_model(meter, "meter", model_errors)
        report["meter"] = {
            "slug": meter.slug,
            "aggregation": getattr(meter.aggregation, "value", meter.aggregation),
            "event_type": meter.event_type,
            "value_property": meter.value_property,
            "group_by": meter.group_by,
        }

        # 5: poll the query until the hour's total is the expected one.
        step = "meters.query_json"

        def keep_raw(pipeline_response: Any, deserialized: Any, headers: Any) -> Any:
            return pipeline_response.http_response, deserialized

        started = time.monotonic()
        polls = 0
        while True:
            polls += 1
            http, result = client.meters.query_json(
                args.meter,
                from_parameter=hour,
                to=hour_end,
                window_size="HOUR",
                subject=[args.subject],
                cls=keep_raw,
            )
            raw = json.loads(http.text(), parse_float=Decimal)
            exact_rows = [r for r in raw.get("data", []) if r.get("subject") in (args.subject, None)]
            total_exact = sum((Decimal(str(r["value"])) for r in exact_rows), Decimal(0))
            sdk_rows = [r for r in result.data if r.subject in (args.subject, None)]
            # The SDK's view: floats. Decimal(str(float)) is the shortest decimal that rounds to
            # the same double; it equals the exact value only while that value fits in a double.
            total_sdk = sum((Decimal(str(r.value)) for r in sdk_rows), Decimal(0))
            if total_exact == expect or time.monotonic() - started >= POLL_FOR_S:
                break
            time.sleep(POLL_EVERY_S)

        touch_model(result, "query", model_errors)
        for i, r in enumerate(result.data):
            touch_model(r, f"query.data[{i}]", model_errors)
            if not isinstance(r.value, float):
                model_errors.append(f"query.data[{i}].value: {type(r.value).__name__}, not float")
            if not isinstance(r.window_start, dt.datetime) or not isinstance(r.window_end, dt.datetime):
                model_errors.append(f"query.data[{i}]: windowStart/windowEnd did not parse to datetime")
        report.update(
            polls=polls,
            waited_s=round(time.monotonic() - started, 2),
            rows=[
                {
                    "value_raw": str(r["value"]),
                    "windowStart": r.get("windowStart"),
                    "windowEnd": r.get("windowEnd"),
                    "subject": r.get("subject"),
                    "groupBy": r.get("groupBy"),
                }
                for r in exact_rows
            ],
            sdk_values=[r.value for r in sdk_rows],
            total_exact=str(total_exact),
            total_sdk=str(total_sdk),
            sdk_value_exact=total_sdk == total_exact,
            query_window_size=getattr(result.window_size, "value", result.window_size),
            content_type=http.headers.get("content-type"),
            table_version=http.headers.get("x-meterflow-table-version"),
            fresh_as_of=http.headers.get("x-meterflow-fresh-as-of"),
        )

        # 6: the subjects of the meter.
        step = "meters.list_subjects"
        subjects = client.meters.list_subjects(args.meter)
        report["subject_listed"] = args.subject in subjects
    except HttpResponseError as e:
        body = None
        try:
            body = e.response.text() if e.response is not None else None
        except Exception:  # noqa: BLE001
            pass
        report["models_ok"] = not model_errors
        report["model_errors"] = model_errors
        fail(report, f"{step}: HTTP {e.status_code}: {body or e.message}")
    except Exception as e:  # noqa: BLE001 - a deserialization or transport error of the SDK
        report["models_ok"] = not model_errors
        report["model_errors"] = model_errors
        fail(report, f"{step}: {type(e).__name__}: {e}")
    finally:
        client.close()

    report["models_ok"] = not model_errors
    report["model_errors"] = model_errors
    if total_exact != expect:
        fail(report, f"after {report['waited_s']} s the total is {total_exact}, expected {expect}")
    if model_errors:
        fail(report, f"the SDK's models could not read our responses: {model_errors}")
    if not report["sdk_value_exact"]:
        fail(report, f"the SDK's float view {total_sdk} differs from the exact {total_exact}")
    if not report["subject_listed"]:
        fail(report, f"subject {args.subject!r} missing from the meter's subjects")
    report["ok"] = True
    print(json.dumps(report, default=str), flush=True)


if __name__ == "__main__":
    main()
