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
    private static final Pattern TOKEN = Pattern.compile("82([0-9A-Fa-f]{16})([0-9A-Fa-f]{2})");
    private static final int FULL_DOCUMENT_NONE = 0;
    private static final int FULL_DOCUMENT_LOOKUP = 1;
    private static final int FULL_DOCUMENT_NULL = 2;
    private static final Pattern STOCK_TOKEN = Pattern.compile("[0-9a-f]{1,16}");

    // ---- thread-local plumbing with the backend ----

    /** Scope of the change stream the current aggregate opens (null: collection from the namespace). */
    static final ThreadLocal<Scope> OPEN_SCOPE = new ThreadLocal<>();
    /** The collection the current write command works on (its monitor is held by the writer). */
    static final ThreadLocal<MongoCollection<?>> CURRENT_COLLECTION = new ThreadLocal<>();
    /** When set, handleInsert collects the documents here instead of recording them. */
    private static final ThreadLocal<List<Document>> INSERT_CAPTURE = new ThreadLocal<>();
    /** The change stream cursor the current command took a batch from. */
    private static final ThreadLocal<StreamCursor> LAST_CURSOR = new ThreadLocal<>();

    static void resetThreadState() {
        OPEN_SCOPE.remove();
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

    /** Latest timestamp handed out (event, or the no-op at startup/truncation). */
    private volatile long lastTs;
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
        this.oldestPoint = start;
    }

    /** The operationTime for command replies: every later event has a greater timestamp. */
    BsonTimestamp operationTime() {
        return new BsonTimestamp(lastTs);
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

        long position;
        Event pendingInvalidate = null;
        if (resumeAfter != null || startAfter != null) {
            long[] token = parseToken(resumeAfter != null ? resumeAfter : startAfter);
            long ts = token[0];
            if (resumeAfter != null && token[1] == KIND_INVALIDATE) {
                throw new MongoServerError(260, "InvalidResumeToken",
                    "Attempting to resume a change stream using 'resumeAfter' is not allowed from an invalidate notification.");
            }
            checkResumable(ts);
            position = ts;
            if (token[1] == KIND_EVENT) {
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
            position = lastTs;
        }

        StreamCursor cursor = new StreamCursor(cursorRegistry.generateCursorId(), scope, aggregation, lookup,
            beforeChangeNull, position, pendingInvalidate);
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
            for (Event event : events) {
                long ts = nextTimestamp();
                event.ts = ts;
                event.wallMillis = clock.millis();
                Long key = ts;
                all.put(key, event);
                byNamespace.computeIfAbsent(event.ns.key, k -> new ConcurrentSkipListMap<>()).put(key, event);
                count++;
                lastTs = ts; // only now: everything up to ts is visible
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
        return Math.max(lastTs + 1, floor);
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

    /** {timestamp, kind} of a resume token; also accepts the stock server's plain hex tokens. */
    private static long[] parseToken(Object token) {
        Object data = token instanceof Document ? ((Document) token).get("_data") : null;
        if (data instanceof String) {
            Matcher m = TOKEN.matcher((String) data);
            if (m.matches()) {
                return new long[] {Long.parseUnsignedLong(m.group(1), 16), Integer.parseInt(m.group(2), 16)};
            }
            if (STOCK_TOKEN.matcher((String) data).matches()) {
                return new long[] {Long.parseUnsignedLong((String) data, 16), KIND_EVENT};
            }
        }
        throw new MongoServerError(260, "InvalidResumeToken", "Invalid resume token: " + token);
    }

    private static int bsonSize(Document document) {
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

        StreamCursor(long id, Scope scope, Aggregation aggregation, int lookup, boolean beforeChangeNull,
                     long position, Event pendingInvalidate) {
            super(id);
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
            if (closed || pendingInvalidate != null || position < lastDroppedTs) {
                return true;
            }
            if (scope.kind == Scope.Kind.COLLECTION) {
                ConcurrentSkipListMap<Long, Event> events = byNamespace.get(scope.db + "." + scope.coll);
                return events != null && events.higherKey(position) != null;
            }
            for (Event event : all.tailMap(Math.max(position, probed), false).values()) {
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
            if (closed || pendingInvalidate != null || !hasStages) {
                return true;
            }
            long start = position;
            Iterator<Event> events = source(start);
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

            int limit = numberToReturn > 0 ? numberToReturn : Integer.MAX_VALUE;
            int bytes = 0;
            Document lastEmittedId = null;
            long lastEmittedTs = Long.MIN_VALUE;
            long highWaterMark = lastTs; // read before the walk: all events up to it are visible
            Iterator<Event> events = source(start);
            boolean exhausted = true;
            while (events.hasNext()) {
                if (batch.size() >= limit) {
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
                    if (size > MAX_EVENT_BYTES) {
                        eventTooLarge(size, change); // the position stays before the event
                    }
                    if (!batch.isEmpty() && bytes + size > MAX_BATCH_BYTES) {
                        exhausted = false; // the event stays for the next batch
                        break;
                    }
                    batch.add(change);
                    bytes += size;
                    lastEmittedId = (Document) change.get("_id");
                    lastEmittedTs = event.ts;
                }
                position = event.ts;
                if (scope.isTerminal(event)) {
                    pendingInvalidate = event;
                    if (batch.size() < limit) {
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
            postBatchResumeToken = lastEmittedTs == position ? lastEmittedId : token(position, KIND_HIGH_WATER_MARK);
            firstBatchTaken = true;
            return batch;
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

        /** Events with a timestamp after {@code start} that may concern this stream, oldest first. */
        private Iterator<Event> source(long start) {
            ConcurrentNavigableMap<Long, Event> events;
            if (scope.kind == Scope.Kind.COLLECTION) {
                events = byNamespace.get(scope.db + "." + scope.coll);
                if (events == null) {
                    return Collections.emptyIterator();
                }
            } else {
                events = all;
            }
            return events.tailMap(start, false).values().iterator();
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
