"""The partition of a record key, as Kafka's default partitioner picks it: the backfill groups
its documents by it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafkas_murmur2

from cdc_migrator.capture import partitions as partitions_module


@settings(max_examples=500, deadline=None)
@given(key=st.binary(max_size=64), partitions=st.integers(1, 64))
def test_the_backfill_picks_the_partition_kafkas_default_partitioner_picks(key, partitions):
    """One document's backfill record and change events must share a partition: the fast
    murmur2 is kafka-python's (the Java client's) hash, for every length of key."""
    assert partitions_module.murmur2(key) == kafkas_murmur2(key)
    assert partitions_module.partition_of(key, partitions) == \
        (kafkas_murmur2(key) & 0x7FFFFFFF) % partitions


def test_murmur2_gives_the_java_clients_values():
    # Values of org.apache.kafka.common.utils.Utils.murmur2 (its own unit test's inputs).
    assert partitions_module.murmur2(b"21") & 0xFFFFFFFF == (-973932308) & 0xFFFFFFFF
    assert partitions_module.murmur2(b"foobar") & 0xFFFFFFFF == (-790332482) & 0xFFFFFFFF
    assert partitions_module.murmur2(b"a-little-bit-long-string") & 0xFFFFFFFF == \
        (-985981536) & 0xFFFFFFFF
    assert partitions_module.murmur2(b"a-little-bit-longer-string") & 0xFFFFFFFF == \
        (-1486304829) & 0xFFFFFFFF
    assert partitions_module.murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") \
        & 0xFFFFFFFF == (-58897971) & 0xFFFFFFFF
    assert partitions_module.murmur2(b"abc") & 0xFFFFFFFF == 479470107
