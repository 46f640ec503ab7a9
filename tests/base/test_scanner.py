"""The scanner: a collection read in _id order, in batches, resumable from the last _id read,
reopened after the last document read when its cursor was lost."""

from __future__ import annotations

import uuid

from cdc_migrator.base.scanner import scan

from ..harness import (
    cursor_metrics,
    wait_for,
)


def test_a_scan_reopens_after_the_last_document_read_when_its_cursor_timed_out(short_cursors):
    coll = short_cursors.limits[f"scan{uuid.uuid4().hex[:6]}"]
    coll.insert_many([{"_id": i} for i in range(10)])
    before = cursor_metrics(short_cursors)["timedOut"]
    batches = scan(coll, batch_size=3)
    seen = []
    for batch in batches:
        seen += [d["_id"] for d in batch]
        if len(seen) == 3:
            wait_for(lambda: cursor_metrics(short_cursors)["timedOut"] > before, timeout=10,
                     what="the scan's cursor timing out")
    assert seen == list(range(10))
    assert batches.reopened == 1
