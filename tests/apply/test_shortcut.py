"""`apply`, the small-collection shortcut: scan and patch in one process, resumable, its dry run
writing nothing, a mistake in a migration one line, a slow rate riding out dying cursors."""

from __future__ import annotations

from cdc_migrator import api

from ..harness import (
    private_settings,
    seed_legacy,
)


def test_apply_at_a_rate_slower_than_the_cursor_timeout_migrates_every_document(short_cursors,
                                                                                tmp_path):
    settings = private_settings(short_cursors, tmp_path)
    seed_legacy(settings.db.items, 6)
    # Two documents per batch at 2/0.9 s: each getMore comes 0.9 s after the last, > 0.6 s.
    report = api.apply(settings, "price_total", batch_size=2, rate=2 / 0.9,
                       show_progress=False)
    assert report.scanned == 6 and report.result.updated == 6
    assert settings.db.items.count_documents({"legacy": {"$exists": True}}) == 0
    settings.close()
