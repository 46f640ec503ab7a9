"""The order in which the migrations of one collection run: a chain.

A migration names the one it follows with ``after=``; one that names none follows the one
before it in file order that names none either (so a directory without ``after`` keeps the
file order it always had), and the first of those follows nothing. Each migration has at
most one follower and the chain reaches every one: a fork (two migrations following one) or a
cycle is refused in one line, as is an ``after`` naming no migration of the collection.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import UsageError
from ..migration import Migration


def predecessor(migrations: list[Migration]) -> dict[str, str | None]:
    """What each migration of one collection (in file order) follows: its ``after``, or the
    one before it in file order that declares none either (None for the first of those)."""
    found: dict[str, str | None] = {}
    last_without: str | None = None
    for m in migrations:
        if m.after is not None:
            found[m.name] = m.after
        else:
            found[m.name] = last_without
            last_without = m.name
    return found


def series(migrations: Mapping[str, Migration], collection: str) -> list[Migration]:
    """The migrations of ``collection`` in the order they run; a UsageError (one line) for an
    ``after`` naming no migration of the collection, a fork or a cycle."""
    mine = [m for m in migrations.values() if m.collection == collection]
    by_name = {m.name: m for m in mine}
    follows = predecessor(mine)
    for m in mine:
        if m.after is not None and m.after not in by_name:
            other = migrations.get(m.after)
            where = f"a migration of {other.collection}" if other is not None \
                else "no migration in the transforms directory"
            raise UsageError(f"{m.name} declares after={m.after!r}, {where}: it must name a "
                             f"migration of {collection}")
    followers: dict[str | None, list[str]] = {}
    for name, before in follows.items():
        followers.setdefault(before, []).append(name)
    for before, after in followers.items():
        if before is not None and len(after) > 1:
            raise UsageError(f"the order of {collection} forks: {_fork(after, by_name)} "
                             f"follow {before}; give one of them after= the other")
    order: list[Migration] = []
    current = _only(followers.get(None))
    while current is not None:
        order.append(by_name[current])
        current = _only(followers.get(current))
    if len(order) < len(mine):
        raise UsageError(f"the order of {collection} has a cycle: "
                         f"{_cycle(follows, {m.name for m in order})}")
    return order


def _only(names: list[str] | None) -> str | None:
    return names[0] if names else None


def _fork(names: list[str], by_name: Mapping[str, Migration]) -> str:
    shown = [n if by_name[n].after is not None else f"{n} (by file order: it declares no "
             "after)" for n in names]
    return " and ".join([", ".join(shown[:-1]), shown[-1]] if len(shown) > 1 else shown)


def _cycle(follows: Mapping[str, str | None], ordered: set[str]) -> str:
    """One cycle among the migrations the chain did not reach, as ``a -> b -> a`` (each
    follows the one before it)."""
    start = next(n for n in follows if n not in ordered)
    path = [start]
    while True:
        before = follows[path[-1]]
        assert before is not None  # a migration off the chain follows one
        if before in path:
            cycle = path[path.index(before):]
            return " -> ".join([*reversed(cycle), cycle[-1]])
        path.append(before)
