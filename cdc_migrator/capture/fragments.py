"""A change event split by ``$changeStreamSplitLargeEvent``, put together again.

MongoDB returns no change event larger than 16 MiB (plus 16 KiB). One that carries both the
document after an update (``updateLookup``) and before it (a pre-image) can be larger, though
each image fits. Where the server has the stage (6.0.9+ of the 6.0 series, and 7.0+), such an
event comes as fragments ``{_id: <its own token>, splitEvent: {fragment: n, of: m}, ...}``, each
with some of the event's top-level fields (see the local server's ``SplitLargeEvent.java``). The
whole event is their fields together, with the last fragment's token as its ``_id``: resuming
after that token goes on after the event.

The tailer saves no position inside an event: a tailer that stops between two fragments resumes
after the event before, and reads every fragment again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from ..base.codec import CODEC_OPTIONS
from ..errors import CaptureStopped

#: The stage, last in a change stream's pipeline.
SPLIT_STAGE: dict[str, Any] = {"$changeStreamSplitLargeEvent": {}}


class Fragments:
    """The fragments of the event being read; :meth:`add` gives the whole event at its last."""

    def __init__(self, codec_options: CodecOptions | None = None) -> None:
        self._parts: list[Mapping[str, Any]] = []
        self.codec_options = codec_options  # of the stream's raw events

    @property
    def pending(self) -> bool:
        """Whether an event is read in part: no position may be saved now."""
        return bool(self._parts)

    def forget(self) -> None:
        """The stream is opened again from a saved position: the fragments come again."""
        self._parts = []

    def add(self, change: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """``change`` itself when it is whole; the whole event when it is the last fragment of
        one; None when more fragments are to come."""
        split = change.get("splitEvent")
        if split is None:
            if self._parts:
                raise self._broken(f"an event came before fragment {len(self._parts) + 1}")
            return change
        number, count = int(split["fragment"]), int(split["of"])
        if number != len(self._parts) + 1:
            raise self._broken(f"fragment {number} of {count} came after "
                               f"{len(self._parts)} fragments")
        self._parts.append(change)
        if number < count:
            return None
        whole: dict[str, Any] = {}
        for part in self._parts:
            for name in part:
                if name not in ("_id", "splitEvent"):
                    whole[name] = part[name]
        parts, self._parts = self._parts, []
        # The token after the last fragment, first as MongoDB puts it.
        event = {"_id": parts[-1]["_id"], **whole}
        if isinstance(change, RawBSONDocument):
            return RawBSONDocument(bson.encode(event, codec_options=CODEC_OPTIONS),
                                   codec_options=self.codec_options)
        return event

    def _broken(self, what: str) -> CaptureStopped:
        self._parts = []
        return CaptureStopped(f"a change event split by $changeStreamSplitLargeEvent came in "
                              f"pieces out of order ({what}): start the tailer again; it "
                              "resumes before the event")
