"""The one BSON codec policy of the tool: how every document it reads becomes Python values.

Every MongoDB client (:class:`~cdc_migrator.base.settings.Settings`, the health checks), every scan,
change stream and re-read, and the decoding of event envelopes use these options, so a
transform receives the same Python values for a document whichever path delivered it:

* UUIDs (binary subtype 4) are :class:`uuid.UUID`, and ``uuid.UUID`` values are written as
  subtype 4 (the standard representation); subtype 3 stays a :class:`bson.Binary`;
* dates are timezone-aware UTC :class:`datetime.datetime`, and a date outside Python's range
  (years 1 to 9999) is a :class:`bson.DatetimeMS` instead of an error;
* documents are plain :class:`dict` (key order kept).

Options that would change this (``uuidRepresentation``, ``datetime_conversion``, ``tz_aware``,
``document_class``, ...) cannot be set in the configuration file, and the same options in the
connection string are overridden.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions, DatetimeConversion

__all__ = ["CODEC_OPTIONS", "client_options"]

#: The codec options of every value the tool reads from MongoDB or from its topics, and writes
#: back. Raw BSON documents (``RawBSONDocument``) derived from a client keep these options.
CODEC_OPTIONS: CodecOptions = CodecOptions(
    document_class=dict,
    tz_aware=True,
    tzinfo=UTC,
    uuid_representation=UuidRepresentation.STANDARD,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
)


def client_options() -> dict[str, Any]:
    """The keyword arguments that give a ``MongoClient`` :data:`CODEC_OPTIONS`.

    Keyword arguments win over the same options in a connection string.
    """
    return {
        "document_class": CODEC_OPTIONS.document_class,
        "tz_aware": CODEC_OPTIONS.tz_aware,
        "tzinfo": CODEC_OPTIONS.tzinfo,
        "uuidRepresentation": "standard",
        "datetime_conversion": CODEC_OPTIONS.datetime_conversion,
    }
