"""The garbage collector set for the long-running commands (base/collector.py): set for the
command, put back after it, and every command that migrates documents sets it."""

from __future__ import annotations

import ast
import gc
import weakref

from cdc_migrator.base import collector

from ..harness import ROOT


def test_tuned_sets_the_collector_for_the_block_and_puts_it_back():
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    kept = []  # something made before: frozen in the block, back in sight after
    with collector.tuned():
        assert gc.get_threshold() == (collector.YOUNG, *before[1:])
        assert gc.get_freeze_count() > frozen
        kept.append(object())
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen == 0


def test_tuned_puts_it_back_when_the_command_fails():
    before = gc.get_threshold()
    try:
        with collector.tuned():
            raise RuntimeError("a command failing")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_garbage_with_cycles_is_collected_while_tuned():
    class Node:
        pass

    with collector.tuned():
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        assert gone() is not None  # garbage, and not yet collected
        made = [[] for _ in range(collector.YOUNG + 1)]  # enough to start a collection
        assert gone() is None  # collected without a gc.collect() call
        del made


#: The commands that migrate documents for long; cli.py sets the collector in each.
MIGRATING = {"apply", "tail", "backfill", "consume", "run", "revert", "next_", "accept"}


def test_every_command_that_migrates_sets_the_collector():
    tree = ast.parse((ROOT / "cdc_migrator" / "cli.py").read_text())
    setting = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
               and "collector.tuned()" in ast.unparse(node)}
    assert setting == MIGRATING
