import java.time.Clock;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.ConcurrentMap;
import java.util.concurrent.ConcurrentNavigableMap;
import java.util.concurrent.ConcurrentSkipListMap;
import java.util.concurrent.locks.ReentrantLock;
import java.util.function.BiFunction;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.backend.AbstractCursor;
import de.bwaldvogel.mongo.backend.Cursor;
import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.backend.aggregation.Aggregation;
import de.bwaldvogel.mongo.backend.aggregation.stage.MatchStage;
import de.bwaldvogel.mongo.backend.aggregation.stage.UnsetStage;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;
import de.bwaldvogel.mongo.oplog.Oplog;
import de.bwaldvogel.mongo.wire.bson.BsonEncoder;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;

/**
 * Change history for change streams, kept in memory and shaped like MongoDB 6.
 *
 * <p>Events live in skip lists keyed by their 64-bit timestamp: one over all namespaces and one per
 * collection, so a collection change stream reads only its own events from its position onwards.
 * Timestamps are assigned under one lock, strictly increasing, and an event is in both maps before
 * {@link #lastTs} moves to it: every event at or before {@code lastTs} is visible to readers.
 * The history is bounded like a capped oplog: beyond {@code maxEvents} the oldest events go, and
 * resuming from before the oldest retained point fails with ChangeStreamHistoryLost (286).
 *
 * <p>The backend (LocalMongo.Backend) talks to this class through a few thread-locals, because the
 * library calls the {@link Oplog} methods from deep inside its command handling.
 */
public final class ChangeStreamOplog implements Oplog {

    static final int HISTORY_LOST_CODE = 286;
    static final String HISTORY_LOST_NAME = "ChangeStreamHistoryLost";
    static final String HISTORY_LOST_MESSAGE =
        "Resume of change stream was not possible, as the resume point may no longer be in the oplog.";

    /** Largest total BSON size of one batch, as in MongoDB (16 MiB). */
    private static final int MAX_BATCH_BYTES = 16 * 1024 * 1024;
    /**
     * Largest change event MongoDB returns, after the stream's stages: BSONObjMaxInternalSize,
     * 16 MiB plus 16 KiB. A larger one fails the aggregate or getMore with 10334.
     */
    static final int MAX_EVENT_BYTES = 16 * 1024 * 1024 + 16 * 1024;
    static final int EVENT_TOO_LARGE_CODE = 10334;

    // resume token kinds, the last byte of the token
    private static final int KIND_HIGH_WATER_MARK = 0x00;
    private static final int KIND_INVALIDATE = 0x01;
    private static final int KIND_EVENT = 0x04;
    /** "82", the timestamp, the kind; a fragment of a split event adds its number (from 0). */
    private static final Pattern TOKEN = Pattern.compile("82([0-9A-Fa-f]{16})([0-9A-Fa-f]{2})([0-9A-Fa-f]{4})?");
    private static final int FULL_DOCUMENT_NONE = 0;
    private static final int FULL_DOCUMENT_LOOKUP = 1;
    private static final int FULL_DOCUMENT_NULL = 2;
    private static final Pattern STOCK_TOKEN = Pattern.compile("[0-9a-f]{1,16}");

    // ---- thread-local plumbing with the backend ----

    /** Scope of the change stream the current aggregate opens (null: collection from the namespace). */
    static final ThreadLocal<Scope> OPEN_SCOPE = new ThreadLocal<>();
    /** Set when the current aggregate's pipeline ended with $changeStreamSplitLargeEvent. */
    static final ThreadLocal<Boolean> OPEN_SPLIT = new ThreadLocal<>();
    /** The timestamp the current write's event gets: an oplog hole being filled (see OplogHole). */
    private static final ThreadLocal<Long> FORCED_TS = new ThreadLocal<>();
    /** The collection the current write command works on (its monitor is held by the writer). */
    static final ThreadLocal<MongoCollection<?>> CURRENT_COLLECTION = new ThreadLocal<>();
    /** When set, handleInsert collects the documents here instead of recording them. */
    private static final ThreadLocal<List<Document>> INSERT_CAPTURE = new ThreadLocal<>();
    /** The change stream cursor the current command took a batch from. */
    private static final ThreadLocal<StreamCursor> LAST_CURSOR = new ThreadLocal<>();

    static void resetThreadState() {
        OPEN_SCOPE.remove();
        OPEN_SPLIT.remove();
        CURRENT_COLLECTION.remove();
        INSERT_CAPTURE.remove();
        LAST_CURSOR.remove();
        PreImages.clear();
    }

    static List<Document> beginInsertCapture() {
        List<Document> captured = new ArrayList<>();
        INSERT_CAPTURE.set(captured);
        return captured;
    }

    static void endInsertCapture() {
        INSERT_CAPTURE.remove();
    }

    static StreamCursor lastCursor() {
        return LAST_CURSOR.get();
    }

    // ---- state ----

    private final Clock clock;
    private final CursorRegistry cursorRegistry;
    private final BiFunction<String, String, MongoCollection<?>> collections;
    private final long maxEvents;

    private final ReentrantLock writeLock = new ReentrantLock();
    private final ConcurrentSkipListMap<Long, Event> all = new ConcurrentSkipListMap<>();
    private final ConcurrentMap<String, ConcurrentSkipListMap<Long, Event>> byNamespace = new ConcurrentHashMap<>();
    private final ConcurrentMap<String, Namespace> namespaces = new ConcurrentHashMap<>();
    private long count; // guarded by writeLock
    /** Run once after the next write (getMores waiting for events, see ChangeStreamAwait). */
    private final ConcurrentLinkedQueue<Runnable> waiters = new ConcurrentLinkedQueue<>();

    /** Latest applied timestamp (event, or the no-op at startup/truncation): replies' operationTime. */
    private volatile long lastTs;
    /** Latest timestamp handed out: lastTs, or a reserved one (an oplog hole) after it. */
    private long lastReserved; // guarded by writeLock
    /** The reserved timestamp of a write not yet committed (an oplog hole), or NO_HOLE. */
    private volatile long holeTs = NO_HOLE;
    private static final long NO_HOLE = Long.MAX_VALUE;
    /** Resume points older than this are lost. */
    private volatile long oldestPoint;
    /** Timestamp of the newest event dropped from the history (-1: none). */
    private volatile long lastDroppedTs = -1;

    /**
     * @param collections finds an existing collection by database and collection name, or null
     */
    ChangeStreamOplog(Clock clock, CursorRegistry cursorRegistry,
                      BiFunction<String, String, MongoCollection<?>> collections, long maxEvents) {
        if (maxEvents < 1) {
            throw new IllegalArgumentException("oplog.maxEvents must be at least 1");
        }
        this.clock = clock;
        this.cursorRegistry = cursorRegistry;
        this.collections = collections;
        this.maxEvents = maxEvents;
        long start = clock.instant().getEpochSecond() << 32; // like a replica set's first oplog entry
        this.lastTs = start;
        this.lastReserved = start;
        this.oldestPoint = start;
    }

    /**
     * The operationTime for command replies: the last applied write, as a primary reports it
     * (while an oplog hole is open, a write before it may still come).
     */
    BsonTimestamp operationTime() {
        return new BsonTimestamp(lastTs);
    }

    /**
     * The point up to which every write is visible: what change streams read up to, and the
     * majority commit point of this one-node "replica set". Before an open oplog hole.
     */
    BsonTimestamp committedTime() {
        return new BsonTimestamp(visibleTs());
    }

    /** Whether every write up to {@code ts} is committed: no oplog hole is open at or before it. */
    boolean committedThrough(long ts) {
        return holeTs > ts;
    }

    private long visibleTs() {
        long hole = holeTs;
        return hole == NO_HOLE ? lastTs : Math.min(lastTs, hole - 1);
    }

    /**
     * Test-only: hands out the next timestamp to a write that will commit later
     * ({@link #fillHole}); until then change streams see nothing from it on, while later writes
     * are applied. One hole at a time.
     */
    long reserveHole() {
        writeLock.lock();
        try {
            if (holeTs != NO_HOLE) {
                throw new MongoServerError(2, "BadValue", "an oplog hole is already open at " + new BsonTimestamp(holeTs));
            }
            long ts = nextTimestamp();
            lastReserved = ts;
            holeTs = ts;
            return ts;
        } finally {
            writeLock.unlock();
        }
    }

    /**
     * Runs the write that reserved the hole; its event (one at most) gets the reserved
     * timestamp. Then the hole is closed, whatever the write did.
     */
    Document fillHole(java.util.function.Supplier<Document> write) {
        long ts = holeTs;
        if (ts == NO_HOLE) {
            throw new MongoServerError(2, "BadValue", "no oplog hole is open");
        }
        FORCED_TS.set(ts);
        try {
            return write.get();
        } finally {
            FORCED_TS.remove();
            writeLock.lock();
            try {
                holeTs = NO_HOLE;
            } finally {
                writeLock.unlock();
            }
            wakeWaiters();
        }
    }

    /** The oldest point a change stream can still resume from (the start of the history). */
    BsonTimestamp oldestResumePoint() {
        return new BsonTimestamp(oldestPoint);
    }

    // ---- Oplog: called by the library ----

    @Override
    public void handleInsert(String namespace, List<Document> documents) {
        if (!tracked(namespace)) {
            return;
        }
        List<Document> capture = INSERT_CAPTURE.get();
        if (capture != null) {
            capture.addAll(documents);
            return;
        }
        recordInserts(namespace, documents);
    }

    @Override
    public void handleUpdate(String namespace, Document selector, Document update, List<Object> modifiedIds) {
        if (modifiedIds.isEmpty() || !tracked(namespace)) {
            return;
        }
        MongoCollection<?> collection = CURRENT_COLLECTION.get();
        if (collection == null || !collection.getFullName().equals(namespace)) {
            Namespace ns = namespace(namespace);
            collection = collections.apply(ns.db, ns.coll);
        }
        recordUpdates(namespace, update, modifiedIds, collection);
    }

    @Override
    public void handleDelete(String namespace, Document query, List<Object> deletedIds) {
        if (!deletedIds.isEmpty() && tracked(namespace)) {
            recordDeletes(namespace, deletedIds);
        }
    }

    @Override
    public void handleDropCollection(String namespace) {
        PreImages.afterDrop(namespace);
        if (tracked(namespace)) {
            record(List.of(new Event("drop", namespace(namespace), null, null, null, null)));
        }
    }

    @Override
    public Cursor createCursor(Document spec, String namespace, Aggregation aggregation) {
        Scope scope = OPEN_SCOPE.get();
        if (scope == null) {
            Namespace ns = namespace(namespace);
            scope = Scope.collection(ns.db, ns.coll);
        }

        Object fullDocument = spec.getOrDefault("fullDocument", "default");
        int lookup; // what update events carry as fullDocument
        if ("default".equals(fullDocument)) {
            lookup = FULL_DOCUMENT_NONE;
        } else if ("whenAvailable".equals(fullDocument)) {
            lookup = FULL_DOCUMENT_NULL; // no post-images on this server: never available
        } else if ("updateLookup".equals(fullDocument)) {
            lookup = FULL_DOCUMENT_LOOKUP;
        } else if ("required".equals(fullDocument)) {
            throw new MongoServerError(72, "InvalidOptions",
                "fullDocument: 'required' needs post-images, which this test server does not keep");
        } else {
            throw new MongoServerError(2, "BadValue", "unrecognized value for fullDocument: " + fullDocument);
        }
        Object before = spec.getOrDefault("fullDocumentBeforeChange", "off");
        boolean beforeChangeNull;
        if ("off".equals(before)) {
            beforeChangeNull = false;
        } else if ("whenAvailable".equals(before)) {
            beforeChangeNull = true; // the pre-image where the collection keeps them (PreImages), else null
        } else if ("required".equals(before)) {
            throw new MongoServerError(72, "InvalidOptions",
                "fullDocumentBeforeChange: 'required' needs pre-images, which this test server does not keep");
        } else {
            throw new MongoServerError(2, "BadValue", "unrecognized value for fullDocumentBeforeChange: " + before);
        }

        Object resumeAfter = spec.get("resumeAfter");
        Object startAfter = spec.get("startAfter");
        Object startAt = spec.get("startAtOperationTime");
        int options = (resumeAfter != null ? 1 : 0) + (startAfter != null ? 1 : 0) + (startAt != null ? 1 : 0);
        if (options > 1) {
            throw new MongoServerError(40674, "Location40674",
                "Only one type of resume option is allowed, but multiple were found.");
        }

        boolean split = Boolean.TRUE.equals(OPEN_SPLIT.get());
        long position;
        Event pendingInvalidate = null;
        int skipFragments = 0;
        if (resumeAfter != null || startAfter != null) {
            long[] token = parseToken(resumeAfter != null ? resumeAfter : startAfter);
            long ts = token[0];
            if (resumeAfter != null && token[1] == KIND_INVALIDATE) {
                throw new MongoServerError(260, "InvalidResumeToken",
                    "Attempting to resume a change stream using 'resumeAfter' is not allowed from an invalidate notification.");
            }
            if (token[2] >= 0 && !split) {
                throw SplitLargeEvent.resumeNeedsStage();
            }
            checkResumable(ts);
            position = ts;
            if (token[2] >= 0) { // after a fragment: the event is split again, the fragments up to it skipped
                position = ts - 1;
                skipFragments = (int) token[2] + 1;
            } else if (token[1] == KIND_EVENT) {
                Event event = all.get(ts);
                if (event != null && scope.isTerminal(event)) {
                    pendingInvalidate = event; // resuming after a drop/rename: the stream is already invalid
                }
            }
        } else if (startAt != null) {
            if (!(startAt instanceof BsonTimestamp)) {
                throw new MongoServerError(14, "TypeMismatch", "startAtOperationTime must be a Timestamp");
            }
            long ts = ((BsonTimestamp) startAt).getValue();
            checkResumable(ts);
            position = ts - 1; // inclusive
        } else {
            // MongoDB starts a new stream one tick after the last applied write
            // (DocumentSourceChangeStream::getStartTimeForNewStream), even past an oplog hole
            position = lastTs;
        }

        StreamCursor cursor = new StreamCursor(cursorRegistry.generateCursorId(), scope, aggregation, lookup,
            beforeChangeNull, position, pendingInvalidate, split, skipFragments);
        cursorRegistry.add(cursor);
        return cursor;
    }

    private void checkResumable(long ts) {
        if (ts < oldestPoint) {
            throw historyLost();
        }
    }

    private static MongoServerError historyLost() {
        return new MongoServerError(HISTORY_LOST_CODE, HISTORY_LOST_NAME, HISTORY_LOST_MESSAGE);
    }

    // ---- recording, also called by the backend ----

    void recordInserts(String namespace, List<Document> documents) {
        if (documents.isEmpty() || !tracked(namespace)) {
            return;
        }
        Namespace ns = namespace(namespace);
        List<Event> events = new ArrayList<>(documents.size());
        for (Document document : documents) {
            Document copy = document.cloneDeeply();
            events.add(new Event("insert", ns, copy.get("_id"), copy, null, null));
        }
        record(events);
    }

    void recordDeletes(String namespace, List<Object> ids) {
        if (ids.isEmpty() || !tracked(namespace)) {
            return;
        }
        Namespace ns = namespace(namespace);
        List<Event> events = new ArrayList<>(ids.size());
        for (Object id : ids) {
            Event event = new Event("delete", ns, id, null, null, null);
            event.preImage = PreImages.of(namespace, id);
            events.add(event);
        }
        record(events);
    }

    /** Update or replace events for documents already changed; the caller holds the collection's monitor. */
    void recordUpdates(String namespace, Document update, List<Object> ids, MongoCollection<?> collection) {
        if (ids.isEmpty() || !tracked(namespace)) {
            return;
        }
        Namespace ns = namespace(namespace);
        boolean replacement = update.keySet().stream().noneMatch(key -> key.startsWith("$"));
        List<Event> events = new ArrayList<>(ids.size());
        Object monitor = collection != null ? collection : events;
        synchronized (monitor) { // the writer holds it already; we read live documents and copy what we keep
            for (Object id : ids) {
                Document current = collection == null ? null : findLiveById(collection, id);
                Event event;
                if (replacement) {
                    event = new Event("replace", ns, id, current == null ? null : current.cloneDeeply(), null, null);
                } else {
                    List<String> removed = new ArrayList<>();
                    event = new Event("update", ns, id, null, describeUpdate(update, current, removed), null);
                    event.removedFields = removed.isEmpty() ? NO_FIELDS : removed.toArray(NO_FIELDS);
                }
                event.preImage = PreImages.of(namespace, id);
                events.add(event);
            }
        }
        record(events);
    }

    /**
     * Events of pipeline-style updates, from the documents before and after: an update event
     * whose description lists each top-level field added or changed and each removed, or a
     * replace event when that description would be larger than the new document (as MongoDB
     * logs a replacement when the diff is larger, PipelineExecutor). The caller holds the
     * collection's monitor.
     */
    void recordRewrites(String namespace, List<Document> befores, MongoCollection<?> collection) {
        if (befores.isEmpty() || !tracked(namespace)) {
            return;
        }
        Namespace ns = namespace(namespace);
        List<Event> events = new ArrayList<>(befores.size());
        for (Document before : befores) {
            Object id = before.get("_id");
            Document after = findById(collection, id);
            if (after == null || after.equals(before)) {
                continue;
            }
            Document updated = new Document();
            List<String> removed = new ArrayList<>();
            for (Map.Entry<String, Object> field : after.entrySet()) {
                if (!before.containsKey(field.getKey()) || !java.util.Objects.equals(before.get(field.getKey()), field.getValue())) {
                    updated.put(field.getKey(), field.getValue());
                }
            }
            for (String name : before.keySet()) {
                if (!after.containsKey(name)) {
                    removed.add(name);
                }
            }
            Document diff = new Document("u", updated).append("r", removed);
            Event event = bsonSize(diff) > bsonSize(after) ? new Event("replace", ns, id, after, null, null)
                : new Event("update", ns, id, null, updated, null);
            event.removedFields = removed.toArray(NO_FIELDS);
            event.preImage = PreImages.of(namespace, id);
            events.add(event);
        }
        record(events);
    }

    void recordDropDatabase(String db) {
        PreImages.afterDropDatabase(db);
        if (!internalDatabase(db)) {
            record(List.of(new Event("dropDatabase", namespace(db), null, null, null, null)));
        }
    }

    void recordRename(String from, String to) {
        PreImages.afterRename(from, to);
        if (tracked(from)) {
            record(List.of(new Event("rename", namespace(from), null, null, null, namespace(to))));
        }
    }

    /** Test-only: forget all history, as if the oplog had rolled over up to now. */
    Document truncate() {
        long dropped;
        long now;
        writeLock.lock();
        try {
            dropped = count;
            if (!all.isEmpty()) {
                lastDroppedTs = all.lastKey();
            }
            all.clear();
            for (ConcurrentSkipListMap<Long, Event> events : byNamespace.values()) {
                events.clear();
            }
            count = 0;
            now = nextTimestamp(); // a no-op entry: the new oldest point
            oldestPoint = now;
            lastReserved = now;
            lastTs = now;
        } finally {
            writeLock.unlock();
        }
        wakeWaiters();
        return new Document("droppedEvents", dropped)
            .append("oldestResumePoint", new BsonTimestamp(now))
            .append("ok", 1.0);
    }

    private void record(List<Event> events) {
        writeLock.lock();
        try {
            Long forced = FORCED_TS.get();
            if (forced != null && events.size() > 1) {
                throw new IllegalStateException("the write filling an oplog hole recorded " + events.size() + " events");
            }
            for (Event event : events) {
                long ts = forced != null ? forced : nextTimestamp();
                event.ts = ts;
                event.wallMillis = clock.millis();
                Long key = ts;
                all.put(key, event);
                byNamespace.computeIfAbsent(event.ns.key, k -> new ConcurrentSkipListMap<>()).put(key, event);
                count++;
                lastReserved = Math.max(lastReserved, ts);
                lastTs = Math.max(lastTs, ts); // only now: everything up to ts is visible (but a hole)
            }
            while (count > maxEvents) {
                Map.Entry<Long, Event> oldest = all.firstEntry();
                lastDroppedTs = oldest.getKey(); // before removal: readers that miss it see this
                all.remove(oldest.getKey());
                ConcurrentSkipListMap<Long, Event> nsEvents = byNamespace.get(oldest.getValue().ns.key);
                if (nsEvents != null) {
                    nsEvents.remove(oldest.getKey());
                }
                count--;
                oldestPoint = all.isEmpty() ? lastTs : all.firstKey();
            }
        } finally {
            writeLock.unlock();
        }
        wakeWaiters();
    }

    /** Calls {@code waiter} once, after the next event is recorded (or the history truncated). */
    void onNextWrite(Runnable waiter) {
        waiters.add(waiter);
    }

    void cancelWaiter(Runnable waiter) {
        waiters.remove(waiter);
    }

    /** Wakes held getMores so they look again (after killCursors: a killed cursor's getMore ends). */
    void wakeWaiters() {
        Runnable waiter;
        while ((waiter = waiters.poll()) != null) {
            waiter.run();
        }
    }

    /** Next timestamp: seconds of the wall clock in the high half, a counter in the low half. */
    private long nextTimestamp() {
        long floor = (clock.instant().getEpochSecond() << 32) | 1L;
        return Math.max(lastReserved + 1, floor);
    }

    // ---- helpers ----

    private Namespace namespace(String fullName) {
        return namespaces.computeIfAbsent(fullName, Namespace::new);
    }

    private static boolean internalDatabase(String db) {
        return db.equals("admin") || db.equals("local") || db.equals("config");
    }

    private static boolean tracked(String fullName) {
        int dot = fullName.indexOf('.');
        if (dot < 0) {
            return false;
        }
        String db = fullName.substring(0, dot);
        String coll = fullName.substring(dot + 1);
        return !internalDatabase(db) && !coll.startsWith("system.") && !coll.contains("$");
    }

    /** The current document with this _id, copied, or null. Looks it up through the _id index. */
    static Document findById(MongoCollection<?> collection, Object id) {
        synchronized (collection) { // the library's collections synchronize on themselves
            Document document = findLiveById(collection, id);
            return document == null ? null : document.cloneDeeply();
        }
    }

    /** The stored document itself: only while holding the collection's monitor, and not to be kept. */
    private static Document findLiveById(MongoCollection<?> collection, Object id) {
        if (collection instanceof IdIndexedMemory.Collection indexed) {
            return indexed.liveById(id);
        }
        Document query = new Document("_id", new Document("$in", List.of(id)));
        for (Document document : collection.handleQuery(query)) {
            return document;
        }
        return null;
    }

    /**
     * updatedFields of an operator update (removed paths go to {@code removed}). Values are read from the document after the update,
     * so $inc, $push and friends report the resulting values. Paths with positional operators are
     * reported at the field before the first positional segment.
     */
    private static Document describeUpdate(Document update, Document current, List<String> removed) {
        Document updated = new Document();
        for (String operator : update.keySet()) {
            Object spec = update.get(operator);
            if (!(spec instanceof Document)) {
                continue;
            }
            for (String path : ((Document) spec).keySet()) {
                switch (operator) {
                    case "$unset":
                        removed.add(path);
                        break;
                    case "$setOnInsert":
                        break;
                    case "$rename":
                        removed.add(path);
                        addUpdated(updated, current, String.valueOf(((Document) spec).get(path)));
                        break;
                    default:
                        addUpdated(updated, current, path);
                }
            }
        }
        return updated;
    }

    private static final String[] NO_FIELDS = new String[0];

    private static void addUpdated(Document updated, Document current, String path) {
        if (current == null) {
            return;
        }
        String[] parts = path.split("\\.");
        int end = 0;
        while (end < parts.length && !parts[end].startsWith("$")) {
            end++;
        }
        if (end == 0) {
            return;
        }
        String cut = String.join(".", java.util.Arrays.copyOf(parts, end));
        Object value = valueAt(current, cut);
        if (value == NOT_FOUND && end > 1) {
            cut = parts[0];
            value = valueAt(current, cut);
        }
        if (value != NOT_FOUND) {
            updated.put(cut, copyValue(value));
        }
    }

    private static final Object NOT_FOUND = new Object();

    private static Object copyValue(Object value) {
        return value instanceof Document || value instanceof List
            ? new Document("v", value).cloneDeeply().get("v") : value;
    }

    private static Object valueAt(Document document, String path) {
        Object node = document;
        for (String part : path.split("\\.")) {
            if (node instanceof Document) {
                Document d = (Document) node;
                if (!d.containsKey(part)) {
                    return NOT_FOUND;
                }
                node = d.get(part);
            } else if (node instanceof List && part.matches("\\d+")) {
                List<?> list = (List<?>) node;
                int index = Integer.parseInt(part);
                if (index >= list.size()) {
                    return NOT_FOUND;
                }
                node = list.get(index);
            } else {
                return NOT_FOUND;
            }
        }
        return node;
    }

    static Document token(long ts, int kind) {
        return new Document("_data", String.format("82%016X%02X", ts, kind));
    }

    /** The resume token of fragment {@code fragment} (from 0) of a split event. */
    static Document fragmentToken(long ts, int fragment) {
        return new Document("_data", String.format("82%016X%02X%04X", ts, KIND_EVENT, fragment));
    }

    /**
     * {timestamp, kind, fragment (-1: none)} of a resume token; also accepts the stock server's
     * plain hex tokens.
     */
    private static long[] parseToken(Object token) {
        Object data = token instanceof Document ? ((Document) token).get("_data") : null;
        if (data instanceof String) {
            Matcher m = TOKEN.matcher((String) data);
            if (m.matches()) {
                return new long[] {Long.parseUnsignedLong(m.group(1), 16), Integer.parseInt(m.group(2), 16),
                    m.group(3) == null ? -1 : Integer.parseInt(m.group(3), 16)};
            }
            if (STOCK_TOKEN.matcher((String) data).matches()) {
                return new long[] {Long.parseUnsignedLong((String) data, 16), KIND_EVENT, -1};
            }
        }
        throw new MongoServerError(260, "InvalidResumeToken", "Invalid resume token: " + token);
    }

    static int bsonSize(Document document) {
        ByteBuf buffer = Unpooled.buffer();
        try {
            BsonEncoder.encodeDocument(document, buffer);
            return buffer.writerIndex();
        } finally {
            buffer.release();
        }
    }

    // ---- types ----

    /** A database and collection name, shared by all events of that namespace. */
    static final class Namespace {
        final String key;  // "db.coll", or "db" for database events
        final String db;
        final String coll; // null for a database

        Namespace(String key) {
            this.key = key;
            int dot = key.indexOf('.');
            this.db = dot < 0 ? key : key.substring(0, dot);
            this.coll = dot < 0 ? null : key.substring(dot + 1);
        }

        Document toDocument() {
            Document document = new Document("db", db);
            if (coll != null) {
                document.put("coll", coll);
            }
            return document;
        }
    }

    static final class Event {
        final String op; // insert, update, replace, delete, drop, rename, dropDatabase
        final Namespace ns;
        final Object id;
        final Document fullDocument;      // insert, replace
        final Document updatedFields;     // update
        String[] removedFields;           // update
        Document preImage;                // update, replace, delete: where the collection keeps them
        final Namespace to;               // rename
        long ts;
        long wallMillis;

        Event(String op, Namespace ns, Object id, Document fullDocument, Document updatedFields, Namespace to) {
            this.op = op;
            this.ns = ns;
            this.id = id;
            this.fullDocument = fullDocument;
            this.updatedFields = updatedFields;
            this.to = to;
        }
    }

    /** What one change stream watches: a collection, a database, or the whole deployment. */
    static final class Scope {
        enum Kind { COLLECTION, DATABASE, CLUSTER }

        final Kind kind;
        final String db;
        final String coll;

        private Scope(Kind kind, String db, String coll) {
            this.kind = kind;
            this.db = db;
            this.coll = coll;
        }

        static Scope collection(String db, String coll) {
            return new Scope(Kind.COLLECTION, db, coll);
        }

        static Scope database(String db) {
            return new Scope(Kind.DATABASE, db, null);
        }

        static Scope cluster() {
            return new Scope(Kind.CLUSTER, null, null);
        }

        boolean matches(Event event) {
            switch (kind) {
                case COLLECTION:
                    return db.equals(event.ns.db) && coll.equals(event.ns.coll);
                case DATABASE:
                    return db.equals(event.ns.db);
                default:
                    return true;
            }
        }

        /** Events after which MongoDB invalidates (closes) the stream. */
        boolean isTerminal(Event event) {
            if (!matches(event)) {
                return false;
            }
            switch (kind) {
                case COLLECTION:
                    return event.op.equals("drop") || event.op.equals("rename");
                case DATABASE:
                    return event.op.equals("dropDatabase");
                default:
                    return false;
            }
        }
    }

    /** A change stream cursor: a position in the history plus the user's pipeline stages. */
    final class StreamCursor extends AbstractCursor {
        private final Scope scope;
        private final Aggregation aggregation;
        private final boolean hasStages;
        private final boolean readOnlyStages; // the user's stages filter, or modify a copy of the event
        private final int lookup;
        private final boolean beforeChangeNull;
        private long position;          // events with a greater timestamp come next
        private Event pendingInvalidate; // a terminal event was returned; invalidate comes next
        private boolean closed;
        private boolean firstBatchTaken; // the aggregate's batch: later ones are getMores
        private Document postBatchResumeToken;
        private final boolean split;     // the pipeline ended with $changeStreamSplitLargeEvent
        private int skipFragments;       // resumed after a fragment: those of its event up to it ...
        private final long skipTs;       // ... the event at this timestamp
        private final java.util.ArrayDeque<Document> pendingFragments = new java.util.ArrayDeque<>();

        StreamCursor(long id, Scope scope, Aggregation aggregation, int lookup, boolean beforeChangeNull,
                     long position, Event pendingInvalidate, boolean split, int skipFragments) {
            super(id);
            this.split = split;
            this.skipFragments = skipFragments;
            this.skipTs = position + 1;
            this.scope = scope;
            this.aggregation = aggregation;
            this.hasStages = aggregation != null && !aggregation.getStages().isEmpty();
            // $match only reads; $unset works on a deep copy of the event
            this.readOnlyStages = hasStages && aggregation.getStages().stream()
                .allMatch(stage -> stage instanceof MatchStage || stage instanceof UnsetStage);
            this.lookup = lookup;
            this.beforeChangeNull = beforeChangeNull;
            this.position = position;
            this.pendingInvalidate = pendingInvalidate;
            this.postBatchResumeToken = token(position, KIND_HIGH_WATER_MARK);
        }

        @Override
        public synchronized boolean isEmpty() {
            return closed;
        }

        synchronized Document postBatchResumeToken() {
            return postBatchResumeToken;
        }

        private long probed = Long.MIN_VALUE; // events up to here were seen not to concern this stream

        /**
         * Whether a getMore now could return something (an event in scope, before the user's
         * pipeline filters it) or fail; false means it would return an empty batch.
         */
        synchronized boolean mayHaveEvents() {
            if (closed || pendingInvalidate != null || position < lastDroppedTs || !pendingFragments.isEmpty()) {
                return true;
            }
            long visible = visibleTs();
            if (scope.kind == Scope.Kind.COLLECTION) {
                ConcurrentSkipListMap<Long, Event> events = byNamespace.get(scope.db + "." + scope.coll);
                Long next = events == null ? null : events.higherKey(position);
                return next != null && next <= visible;
            }
            long from = Math.max(position, probed);
            if (from >= visible) {
                return false;
            }
            for (Event event : all.subMap(from, false, visible, true).values()) {
                if (scope.matches(event)) {
                    return true;
                }
                probed = event.ts;
            }
            return false;
        }

        /**
         * Whether a getMore now would return an event or fail; false means an empty batch.
         * Events the user's stages drop are passed over on the way, as MongoDB's getMore does
         * while it awaits data: a stream that filters out most events (the tailer's, which drops
         * the consumer's own writes) is answered once its maxAwaitTimeMS is up, not woken with an
         * empty batch by each write it drops.
         */
        private Event ready;          // the next event, seen to pass by hasDeliverable ...
        private Document readyChange; // ... and its change event, so takeDocuments need not redo it

        synchronized boolean hasDeliverable() {
            if (!mayHaveEvents()) {
                return false;
            }
            if (closed || pendingInvalidate != null || !hasStages || !pendingFragments.isEmpty()) {
                return true;
            }
            long start = position;
            Iterator<Event> events = source(start, visibleTs());
            while (events.hasNext()) {
                Event event = events.next();
                if (scope.matches(event)) {
                    if (scope.isTerminal(event)) {
                        return true;
                    }
                    try {
                        Document change = changeFor(event);
                        if (change != null) {
                            ready = event; // the getMore it releases returns this change as it is
                            readyChange = change;
                            return true;
                        }
                    } catch (RuntimeException e) {
                        return true; // the getMore reports it
                    }
                }
                position = event.ts;
            }
            if (start < lastDroppedTs) {
                position = start; // history was truncated meanwhile: the getMore fails as before
                return true;
            }
            return false;
        }

        @Override
        public synchronized List<Document> takeDocuments(int numberToReturn) {
            LAST_CURSOR.set(this);
            List<Document> batch = new ArrayList<>();
            if (closed) {
                return batch;
            }
            long start = position;
            if (start < lastDroppedTs) {
                fail();
            }
            if (pendingInvalidate != null) {
                emitInvalidate(batch);
                return batch;
            }

            Batch out = new Batch(batch, numberToReturn);
            if (!out.drain(pendingFragments, position)) {
                finishBatch(out);
                return batch;
            }
            long highWaterMark = visibleTs(); // read before the walk: all events up to it are visible
            Iterator<Event> events = source(start, highWaterMark);
            boolean exhausted = true;
            while (events.hasNext()) {
                if (out.full()) {
                    exhausted = false;
                    break;
                }
                Event event = events.next();
                if (!scope.matches(event)) {
                    position = event.ts;
                    continue;
                }
                Document change = event == ready ? readyChange : changeFor(event);
                ready = null;
                readyChange = null;
                if (change != null) {
                    int size = bsonSize(change);
                    if (split && size + bsonSize(fragmentToken(event.ts, 0)) > SplitLargeEvent.MAX_CHANGE_EVENT_SIZE) {
                        position = event.ts; // the event is taken; its fragments wait in pendingFragments
                        pendingFragments.addAll(fragments(change, event.ts));
                        if (!out.drain(pendingFragments, event.ts)) {
                            exhausted = false;
                            break;
                        }
                        continue;
                    }
                    if (skipFragments > 0 && event.ts == skipTs) {
                        throw SplitLargeEvent.differentSplit(); // resumed from a fragment of an event not split now
                    }
                    skipFragments = 0; // past the resume point: nothing more to skip
                    if (size > MAX_EVENT_BYTES) {
                        eventTooLarge(size, change); // the position stays before the event
                    }
                    if (!out.add(change, size, event.ts)) {
                        exhausted = false; // the event stays for the next batch
                        break;
                    }
                }
                position = event.ts;
                if (scope.isTerminal(event)) {
                    pendingInvalidate = event;
                    if (!out.full()) {
                        checkNotDropped(start);
                        emitInvalidate(batch);
                        return batch;
                    }
                    exhausted = false;
                    break;
                }
            }
            if (exhausted && highWaterMark > position) {
                position = highWaterMark;
            }
            checkNotDropped(start);
            finishBatch(out);
            return batch;
        }

        /** postBatchResumeToken: the last change returned, or where the walk got to (a high-water mark). */
        private void finishBatch(Batch out) {
            if (!pendingFragments.isEmpty()) { // within a split event: after its last fragment returned
                if (out.lastToken != null) {
                    postBatchResumeToken = out.lastToken;
                }
            } else {
                postBatchResumeToken = out.lastToken != null && out.lastEventTs == position ? out.lastToken
                    : token(position, KIND_HIGH_WATER_MARK);
            }
            firstBatchTaken = true;
        }

        /** The fragments of a split event, less those a stream resumed after one of them got already. */
        private List<Document> fragments(Document change, long ts) {
            int tokenSize = bsonSize(fragmentToken(ts, 0));
            List<Document> fragments = SplitLargeEvent.split(change, SplitLargeEvent.MAX_CHANGE_EVENT_SIZE - tokenSize,
                i -> fragmentToken(ts, i));
            int skip = ts == skipTs ? skipFragments : 0; // the resumed event may be gone: split this one whole
            skipFragments = 0;
            if (skip > 1 && fragments.size() < skip) {
                throw SplitLargeEvent.differentSplit();
            }
            return fragments.subList(Math.min(skip, fragments.size()), fragments.size());
        }

        /** One batch being filled: at most so many documents, at most 16 MiB (one document at least). */
        private final class Batch {
            private final List<Document> documents;
            private final int limit;
            private int bytes;
            Document lastToken;
            long lastEventTs = Long.MIN_VALUE;

            Batch(List<Document> documents, int numberToReturn) {
                this.documents = documents;
                this.limit = numberToReturn > 0 ? numberToReturn : Integer.MAX_VALUE;
            }

            boolean full() {
                return documents.size() >= limit;
            }

            /** Adds the change unless the batch is full or it would exceed the batch's size. */
            boolean add(Document change, int size, long ts) {
                if (full() || (!documents.isEmpty() && bytes + size > MAX_BATCH_BYTES)) {
                    return false;
                }
                documents.add(change);
                bytes += size;
                lastToken = (Document) change.get("_id");
                lastEventTs = ts;
                return true;
            }

            /** Moves fragments of the event at {@code ts} into the batch while they fit; true when none is left. */
            boolean drain(java.util.ArrayDeque<Document> fragments, long ts) {
                while (!fragments.isEmpty() && add(fragments.peek(), bsonSize(fragments.peek()), ts)) {
                    fragments.poll();
                }
                return fragments.isEmpty();
            }
        }

        /**
         * An event larger than MongoDB returns: the command fails as MongoDB's does, and the
         * cursor dies. A stream resumed from before the event meets it again.
         */
        private void eventTooLarge(int size, Document change) {
            closed = true;
            cursorRegistry.remove(this);
            String command = firstBatchTaken ? "Executor error during getMore" : "PlanExecutor error during aggregation";
            throw new MongoServerError(EVENT_TOO_LARGE_CODE, "BSONObjectTooLarge", command + " :: caused by :: BSONObj size: "
                + size + " (0x" + Integer.toHexString(size).toUpperCase() + ") is invalid. Size must be between 0 and "
                + MAX_EVENT_BYTES + "(16MB) First element: _id: { _data: \""
                + ((Document) change.get("_id")).get("_data") + "\" }");
        }

        /**
         * Events with a timestamp after {@code start} and up to {@code visible} that may concern
         * this stream, oldest first.
         */
        private Iterator<Event> source(long start, long visible) {
            if (start >= visible) {
                return Collections.emptyIterator();
            }
            ConcurrentNavigableMap<Long, Event> events;
            if (scope.kind == Scope.Kind.COLLECTION) {
                events = byNamespace.get(scope.db + "." + scope.coll);
                if (events == null) {
                    return Collections.emptyIterator();
                }
            } else {
                events = all;
            }
            return events.subMap(start, false, visible, true).values().iterator();
        }

        /** Events after {@code start} were dropped while we read: the stream can not go on. */
        private void checkNotDropped(long start) {
            if (start < lastDroppedTs) {
                fail();
            }
        }

        private void fail() {
            closed = true;
            cursorRegistry.remove(this);
            throw historyLost();
        }

        private void emitInvalidate(List<Document> batch) {
            Event event = pendingInvalidate;
            Document invalidate = new Document("_id", token(event.ts, KIND_INVALIDATE))
                .append("operationType", "invalidate")
                .append("clusterTime", new BsonTimestamp(event.ts))
                .append("wallTime", Instant.ofEpochMilli(event.wallMillis));
            Document change = applyStages(invalidate);
            if (change != null) {
                batch.add(change);
            }
            pendingInvalidate = null;
            closed = true;
            postBatchResumeToken = (Document) invalidate.get("_id");
        }

        /** The event as this stream returns it, or null when the user's stages drop it. */
        private Document changeFor(Event event) {
            if (readOnlyStages && lookup == FULL_DOCUMENT_LOOKUP && event.op.equals("update")) {
                MongoCollection<?> collection = collections.apply(event.ns.db, event.ns.coll);
                if (collection != null) {
                    synchronized (collection) {
                        // The stages do not modify what they get: decide on the stored document
                        // itself, and copy it only for an event that passes (a stream that filters
                        // most events out, like the tailer's, then copies almost nothing).
                        Document live = findLiveById(collection, event.id);
                        Document change = applyStages(toChange(event, true));
                        if (change != null && live != null && change.get("fullDocument") == live) {
                            change.put("fullDocument", live.cloneDeeply());
                        }
                        return change;
                    }
                }
            }
            return applyStages(toChange(event, false));
        }

        private Document applyStages(Document change) {
            if (!hasStages) {
                return change;
            }
            Document expectedId = (Document) change.get("_id");
            List<Document> out = aggregation.runStages(java.util.stream.Stream.of(change));
            if (out.isEmpty()) {
                return null;
            }
            Document result = out.get(0);
            if (!expectedId.equals(result.get("_id"))) {
                throw new MongoServerError(280, "ChangeStreamFatalError",
                    "Encountered an event whose _id field, which contains the resume token, was modified by the pipeline. "
                        + "Modifying the _id field of an event makes it impossible to resume the stream from that point. "
                        + "Only transformations that retain the unmodified _id field are allowed.");
            }
            return result;
        }

        /**
         * The change event document, in MongoDB 6's field order. With {@code live}, an update's
         * looked-up document is the stored one, not a copy: only while holding its collection's
         * monitor, and not to be returned as it is.
         */
        private Document toChange(Event event, boolean live) {
            Document change = new Document("_id", token(event.ts, KIND_EVENT))
                .append("operationType", event.op)
                .append("clusterTime", new BsonTimestamp(event.ts))
                .append("wallTime", Instant.ofEpochMilli(event.wallMillis));
            switch (event.op) {
                case "insert":
                case "replace":
                    change.put("fullDocument", copy(event.fullDocument));
                    change.put("ns", event.ns.toDocument());
                    change.put("documentKey", new Document("_id", event.id));
                    if (beforeChangeNull && event.op.equals("replace")) {
                        change.put("fullDocumentBeforeChange", copy(event.preImage));
                    }
                    break;
                case "update":
                    change.put("ns", event.ns.toDocument());
                    change.put("documentKey", new Document("_id", event.id));
                    change.put("updateDescription", new Document("updatedFields", copy(event.updatedFields))
                        .append("removedFields", new ArrayList<>(List.of(event.removedFields)))
                        .append("truncatedArrays", new ArrayList<>()));
                    if (lookup == FULL_DOCUMENT_LOOKUP) {
                        MongoCollection<?> collection = collections.apply(event.ns.db, event.ns.coll);
                        change.put("fullDocument", collection == null ? null
                            : live ? findLiveById(collection, event.id) : findById(collection, event.id));
                    } else if (lookup == FULL_DOCUMENT_NULL) {
                        change.put("fullDocument", null);
                    }
                    if (beforeChangeNull) {
                        change.put("fullDocumentBeforeChange", copy(event.preImage));
                    }
                    break;
                case "delete":
                    change.put("ns", event.ns.toDocument());
                    change.put("documentKey", new Document("_id", event.id));
                    if (beforeChangeNull) {
                        change.put("fullDocumentBeforeChange", copy(event.preImage));
                    }
                    break;
                case "rename":
                    change.put("ns", event.ns.toDocument());
                    change.put("to", event.to.toDocument());
                    break;
                default: // drop, dropDatabase
                    change.put("ns", event.ns.toDocument());
            }
            return change;
        }

        private Document copy(Document document) {
            // the stored document is shared by every stream; only pipeline stages could modify it
            return document == null || !hasStages ? document : document.cloneDeeply();
        }
    }
}
