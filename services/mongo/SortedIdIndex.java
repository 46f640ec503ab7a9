import java.time.Instant;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.NavigableSet;
import java.util.UUID;
import java.util.concurrent.ConcurrentSkipListSet;

import de.bwaldvogel.mongo.backend.IndexKey;
import de.bwaldvogel.mongo.backend.KeyValue;
import de.bwaldvogel.mongo.backend.ValueComparator;
import de.bwaldvogel.mongo.backend.memory.index.MemoryUniqueIndex;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.bson.ObjectId;

/**
 * The _id index, kept in _id order as well, so that a range query is served from the index.
 *
 * <p>Stock mongo-java-server keeps _id in a hash map, so {@code {_id: {$gte: a}}}, and the
 * backfill's range filters ({@code $gte}/{@code $lt} with {@code $type} brackets, see
 * cdc_migrator/base/ranges.py), scan the whole collection: 32 ranges read every document 32
 * times. MongoDB serves them from its _id B-tree. {@link #narrow} gives the positions of the
 * documents a query can match from its _id bounds, a superset; the caller still applies the
 * whole query to each, so narrowing only decides what is read, never what matches.
 *
 * <p>The hash map stays the authority for uniqueness and equality. The order is
 * {@link ValueComparator}'s, the one the query matcher compares with; it is a total order only
 * for some types (numbers mix int, long and double comparisons; documents and arrays hold
 * numbers), so a collection narrows only while every _id it holds is an ObjectId, string, UUID,
 * date or boolean, and only by bounds of those types. Anything else: no narrowing (a full scan,
 * as before).
 */
final class SortedIdIndex extends MemoryUniqueIndex {
    /** Type brackets of the narrowable types, in {@link ValueComparator}'s order of types. */
    private static final Map<Class<?>, Integer> ORDER = Map.of(
        String.class, 2, UUID.class, 7, ObjectId.class, 8, Boolean.class, 9, Instant.class, 10);
    private static final Map<String, Class<?>> ALIASES = Map.of(
        "string", String.class, "binData", UUID.class, "objectId", ObjectId.class,
        "bool", Boolean.class, "date", Instant.class);

    private static final int START = -1;
    private static final int END = 1;

    /** An entry (an _id and its position) or a bound (value or type bracket, and a side). */
    private record Key(int order, Object value, int position, int side) {
        static Key entry(Object value, int position) {
            return new Key(ORDER.get(value.getClass()), value, position, 0);
        }
    }

    private static final Comparator<Key> KEY_ORDER = (a, b) -> {
        int c = Integer.compare(a.order, b.order);
        if (c != 0) {
            return c;
        }
        if (a.value == null || b.value == null) {  // a type bracket's start or end
            int sa = a.value == null ? a.side : 0;
            int sb = b.value == null ? b.side : 0;
            return Integer.compare(sa, sb);
        }
        c = ValueComparator.asc().compare(a.value, b.value);
        if (c != 0) {
            return c;
        }
        c = Integer.compare(a.side, b.side);  // a value's bound lies before or after its entries
        return c != 0 ? c : Integer.compare(a.position, b.position);
    };

    private final NavigableSet<Key> sorted = new ConcurrentSkipListSet<>(KEY_ORDER);
    /** How many _ids of each class the collection holds; narrowing needs all of them in ORDER. */
    private final Map<Class<?>, Integer> classes = new HashMap<>();
    private int others;

    SortedIdIndex(String name, List<IndexKey> keys, boolean sparse) {
        super(name, keys, sparse);
    }

    static boolean isIdIndex(List<IndexKey> keys) {
        return keys.size() == 1 && keys.get(0).getKey().equals("_id");
    }

    @Override
    protected synchronized boolean putKeyPosition(KeyValue keyValue, Integer position) {
        if (!super.putKeyPosition(keyValue, position)) {
            return false;
        }
        Object id = keyValue.get(0);
        if (id != null && ORDER.containsKey(id.getClass())) {
            sorted.add(Key.entry(id, position));
            classes.merge(id.getClass(), 1, Integer::sum);
        } else {
            others++;
        }
        return true;
    }

    @Override
    protected synchronized Integer removeDocument(KeyValue keyValue) {
        Integer position = super.removeDocument(keyValue);
        if (position != null) {
            Object id = keyValue.get(0);
            if (id != null && ORDER.containsKey(id.getClass())) {
                sorted.remove(Key.entry(id, position));
                classes.merge(id.getClass(), -1, (n, d) -> n + d == 0 ? null : n + d);
            } else {
                others--;
            }
        }
        return position;
    }

    /** The positions (ascending) of the documents {@code query} can match, or null: no narrowing. */
    synchronized List<Integer> narrow(Document query) {
        if (others > 0) {
            return null;
        }
        Range range = bounds(query);
        if (range == Range.ALL) {
            return null;
        }
        List<Integer> positions = new ArrayList<>();
        if (range == Range.NONE || range.lo != null && range.hi != null && KEY_ORDER.compare(range.lo, range.hi) > 0) {
            return positions;
        }
        NavigableSet<Key> keys = range.lo == null ? sorted.headSet(range.hi, true)
            : range.hi == null ? sorted.tailSet(range.lo, true) : sorted.subSet(range.lo, true, range.hi, true);
        for (Key key : keys) {
            positions.add(key.position);
        }
        positions.sort(null);  // the collection's natural order, as a full scan reads it
        return positions;
    }

    /** Inclusive bounds on _id (null: unbounded on that side); ALL and NONE are the extremes. */
    private record Range(Key lo, Key hi) {
        static final Range ALL = new Range(null, null);
        static final Range NONE = new Range(null, null);

        Range and(Range other) {
            if (this == NONE || other == NONE) {
                return NONE;
            }
            Key l = lo == null ? other.lo : other.lo == null ? lo : KEY_ORDER.compare(lo, other.lo) >= 0 ? lo : other.lo;
            Key h = hi == null ? other.hi : other.hi == null ? hi : KEY_ORDER.compare(hi, other.hi) <= 0 ? hi : other.hi;
            return l == null && h == null ? ALL : new Range(l, h);
        }

        Range or(Range other) {
            if (this == NONE) {
                return other;
            }
            if (other == NONE) {
                return this;
            }
            if (this == ALL || other == ALL) {
                return ALL;
            }
            Key l = lo == null || other.lo == null ? null : KEY_ORDER.compare(lo, other.lo) <= 0 ? lo : other.lo;
            Key h = hi == null || other.hi == null ? null : KEY_ORDER.compare(hi, other.hi) >= 0 ? hi : other.hi;
            return l == null && h == null ? ALL : new Range(l, h);
        }
    }

    private Range bounds(Document query) {
        Range range = Range.ALL;
        for (Map.Entry<String, Object> clause : query.entrySet()) {
            Range r = switch (clause.getKey()) {
                case "_id" -> idBounds(clause.getValue());
                case "$and" -> each(clause.getValue(), true);
                case "$or" -> each(clause.getValue(), false);
                default -> Range.ALL;  // another field, $nor, $expr, ...: no bound on _id
            };
            range = range.and(r);
        }
        return range;
    }

    private Range each(Object clauses, boolean all) {
        if (!(clauses instanceof Collection<?> list) || list.isEmpty()) {
            return Range.ALL;
        }
        Range range = all ? Range.ALL : Range.NONE;
        for (Object clause : list) {
            if (!(clause instanceof Document document)) {
                return Range.ALL;
            }
            Range r = bounds(document);
            range = all ? range.and(r) : range.or(r);
        }
        return range;
    }

    private Range idBounds(Object condition) {
        if (!(condition instanceof Document operators) || operators.isEmpty()
            || !operators.keySet().stream().allMatch(k -> k.startsWith("$"))) {
            return valueBounds(condition, true, true);  // plain equality (the hash path takes most)
        }
        Range range = Range.ALL;
        for (Map.Entry<String, Object> op : operators.entrySet()) {
            Range r = switch (op.getKey()) {
                case "$gt", "$gte" -> valueBounds(op.getValue(), true, false);
                case "$lt", "$lte" -> valueBounds(op.getValue(), false, true);
                case "$eq" -> valueBounds(op.getValue(), true, true);
                case "$type" -> typeBounds(op.getValue());
                default -> Range.ALL;
            };
            range = range.and(r);
        }
        return range;
    }

    /** From {@code value} up, down, or both (equality); ALL for a value of another type. */
    private static Range valueBounds(Object value, boolean from, boolean upTo) {
        if (value == null || !ORDER.containsKey(value.getClass())) {
            return Range.ALL;
        }
        return new Range(from ? valueKey(value, START) : null, upTo ? valueKey(value, END) : null);
    }

    /** The bracket of the _id types a {@code $type} names that the collection holds. */
    private Range typeBounds(Object aliases) {
        List<Object> names = aliases instanceof Collection<?> c ? new ArrayList<>(c) : List.of(aliases);
        Range range = Range.NONE;
        for (Object name : names) {
            if (!(name instanceof String alias)) {
                return Range.ALL;  // a numeric type code: not worth reading here
            }
            Class<?> type = ALIASES.get(alias);
            // Every _id held is of a class in ORDER: an alias of none of them matches no _id.
            if (type != null && classes.containsKey(type)) {
                int order = ORDER.get(type);
                range = range.or(new Range(new Key(order, null, 0, START), new Key(order, null, 0, END)));
            }
        }
        return range;
    }

    private static Key valueKey(Object value, int side) {
        return new Key(ORDER.get(value.getClass()), value, side == START ? Integer.MIN_VALUE : Integer.MAX_VALUE, side);
    }
}
