"""_id identity as MongoDB sees it."""

from __future__ import annotations

import bson
from bson import ObjectId
from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=200, deadline=None)
@given(oid=st.builds(ObjectId))
def test_the_identity_of_an_object_id_is_its_bson_as_for_any_other_such_type(oid):
    """id_key takes a shortcut for ObjectIds: the key must be the one of the general rule
    (the value's encoding), so an ObjectId never equals another type's key."""
    from cdc_migrator.base.identity import id_key

    assert id_key(oid) == ("bson", bson.encode({"": oid}))
    assert id_key(oid) != id_key(oid.binary) and id_key(oid) != id_key(str(oid))
