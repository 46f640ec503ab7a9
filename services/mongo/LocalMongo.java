import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.backend.QueryParameters;
import de.bwaldvogel.mongo.backend.Utils;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;
import de.bwaldvogel.mongo.backend.memory.MemoryDatabase;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;
import de.bwaldvogel.mongo.exception.MongoServerException;
import de.bwaldvogel.mongo.oplog.Oplog;
import de.bwaldvogel.mongo.wire.MongoDatabaseHandler;
import io.netty.channel.Channel;
import io.netty.channel.ChannelHandlerContext;
import io.netty.util.AttributeKey;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

/**
 * mongo-java-server (in-memory backend) with MongoDB 6 style change streams, for tests.
 *
 * <p>Usage: {@code LocalMongo [host] [port] [maxEvents]}; maxEvents (also {@code -Doplog.maxEvents})
 * bounds the change history like a capped oplog (default 5,000,000); {@code -DcursorTimeoutMillis}
 * sets the idle-cursor timeout (default 600000, as MongoDB); {@code -Dauth=true} turns access
 * control on, as mongod's {@code --auth} (users, roles, SCRAM; see AccessControl). See
 * docs/testing.md.
 */
public class LocalMongo {
    static final long DEFAULT_MAX_EVENTS = 5_000_000L;

    static class Backend extends MemoryBackend {
        private final long maxEvents;
        private volatile ChangeStreamOplog changes;
        private volatile OplogHole hole;
        private final IdleCursors idleCursors;
        private final ServerParameters parameters = new ServerParameters();
        private final FailCommand failCommand = new FailCommand();
        private final ReplicaSetStatus replicaSet = new ReplicaSetStatus();
        private final AccessControl access; // null: no access control, as a mongod without --auth
        private final MongosMode mongos = new MongosMode();
        private final StandaloneMode standalone = new StandaloneMode();
        private final ShardKeyTargeting targeting = new ShardKeyTargeting();
        private final ReportedVersion reportedVersion;

        Backend(long maxEvents, long cursorTimeoutMillis, ReportedVersion reportedVersion, boolean auth) {
            this.maxEvents = maxEvents;
            this.reportedVersion = reportedVersion;
            this.idleCursors = new IdleCursors(getCursorRegistry(), cursorTimeoutMillis);
            this.access = auth ? new AccessControl(getCursorRegistry()) : null;
            parameters.add("cursorTimeoutMillis", idleCursors::timeoutMillis, idleCursors::setTimeoutMillis);
        }

        @Override
        public Document getServerStatus() {
            Document status = super.getServerStatus();
            if (status.get("metrics") instanceof Document metrics && metrics.get("cursor") instanceof Document cursor) {
                cursor.put("timedOut", idleCursors.timedOut());
                if (cursor.get("open") instanceof Document open) {
                    open.put("noTimeout", idleCursors.openNoTimeout());
                }
            }
            if (status.get("metrics") instanceof Document metrics) {
                metrics.put("queryExecutor", new Document("scannedObjects", IdIndexedMemory.SCANNED_OBJECTS.sum()));
            }
            status.put("localMongo", new Document("untargetedSingleWrites", targeting.status())); // ours, not MongoDB's
            return mongos.serverStatus(status);
        }

        @Override
        public MemoryDatabase openOrCreateDatabase(String databaseName) {
            return new IdIndexedMemory.Database(databaseName, getCursorRegistry());
        }

        @Override
        protected Oplog createOplog() {
            changes = new ChangeStreamOplog(getClock(), getCursorRegistry(), this::existingCollection, maxEvents);
            hole = new OplogHole(changes);
            return changes;
        }

        /** The collection if its database and itself exist, else null (creates nothing). */
        MongoCollection<?> existingCollection(String db, String coll) {
            if (coll == null || !listDatabaseNames().contains(db)) {
                return null;
            }
            return resolveDatabase(db).resolveCollection(coll, false);
        }

        @Override
        public Document handleCommand(Channel channel, String database, String command, Document query) {
            Document reply;
            idleCursors.install(channel); // before installAwait: it must see a getMore before awaitData holds it
            installAwait(channel);
            ChangeStreamOplog.resetThreadState();
            try {
                reply = access == null ? strictDispatch(channel, database, command, query)
                    : access.handle(channel, database, command, query,
                        () -> strictDispatch(channel, database, command, query));
            } catch (MongoServerException e) {
                reply = errorReply(e);
            } finally {
                ChangeStreamOplog.resetThreadState();
            }
            idleCursors.afterCommand(command, query, reply);
            if (reply != null && !reply.containsKey("operationTime")) {
                ChangeStreamOplog history = changes;
                reply.put("operationTime", history != null
                    ? history.operationTime() : new BsonTimestamp(getClock().instant(), 0));
            }
            return reply;
        }

        private static final AttributeKey<Boolean> AWAIT_INSTALLED = AttributeKey.valueOf("changeStreamAwait");

        /** Puts a ChangeStreamAwait and CommittedReads in front of the library's handler, once per connection. */
        private void installAwait(Channel channel) {
            ChangeStreamOplog history = changes;
            if (history == null || channel == null || channel.attr(AWAIT_INSTALLED).setIfAbsent(Boolean.TRUE) != null) {
                return;
            }
            ChannelHandlerContext handler = channel.pipeline().context(MongoDatabaseHandler.class);
            if (handler != null) {
                channel.pipeline().addBefore(handler.name(), "changeStreamAwait",
                    new ChangeStreamAwait(history, getCursorRegistry()));
                channel.pipeline().addBefore(handler.name(), "committedReads", new CommittedReads(history));
            }
        }

        /** MongoDB's behaviour where the library is kinder: fail points, parameters, collations, oplog window. */
        private Document strictDispatch(Channel channel, String database, String command, Document query) {
            Document testOnly = testCommand(channel, database, command, query);
            if (testOnly != null) {
                return testOnly;
            }
            if (!command.equalsIgnoreCase("hello") && !command.equalsIgnoreCase("isMaster")) {
                Document answered = failCommand.check(command, query);
                if (answered != null) {
                    return answered;
                }
            }
            standalone.check(command.equalsIgnoreCase("aggregate") && isChangeStream(query));
            Document mongosAnswer = mongos.refusal(database, command);
            if (mongosAnswer != null) {
                return mongosAnswer;
            }
            if (mongos.on()) {
                targeting.observe(database, command, query, existingCollection("config", "collections"));
            }
            if (ServerParameters.handles(command)) {
                return parameters.handle(database, command, query);
            }
            if (ReplicaSetStatus.handles(database, command)) {
                ChangeStreamOplog history = changes;
                return replicaSet.handle(command, query, getClock().instant(), history.operationTime(),
                    history.committedTime());
            }
            ChangeStreamOplog history = changes;
            if (history != null && OplogWindow.handles(database, command, query)) {
                return new OplogWindow(history).find(query);
            }
            Collations.check(command, query);
            CommittedReads.check(command, query, history);
            if (PreImages.handlesCollMod(command, query)) {
                Object name = query.get(command);
                return PreImages.collMod(database, query,
                    name instanceof String && existingCollection(database, (String) name) != null);
            } else if (command.equalsIgnoreCase("create")) {
                Document reply = dispatch(channel, database, command, PreImages.beforeCreate(query));
                PreImages.afterCreate(database, query, reply);
                return reply;
            } else if (command.equalsIgnoreCase("listCollections")) {
                Document reply = dispatch(channel, database, command, query);
                PreImages.showIn(database, reply);
                return reply;
            }
            return dispatch(channel, database, command, query);
        }

        /** The test-only commands (docs/testing.md), or null for any other command. */
        private Document testCommand(Channel channel, String database, String command, Document query) {
            if (OplogHole.handles(database, command)) {
                return hole.handle(command, query,
                    (db, write) -> dispatch(channel, db, write.keySet().iterator().next(), write));
            } else if (FailCommand.handles(database, command)) {
                return failCommand.configure(query);
            } else if (mongos.mode.handles(database, command)) {
                return mongos.mode.configure(query);
            } else if (standalone.mode.handles(database, command)) {
                return standalone.mode.configure(query);
            } else if (ReportedVersion.handles(database, command)) {
                return reportedVersion.configure(query);
            }
            return null;
        }

        private Document dispatch(Channel channel, String database, String command, Document query) {
            if (command.equalsIgnoreCase("hello")) {
                Document reply = super.handleCommand(channel, database, "isMaster", query);
                reply.put("isWritablePrimary", Boolean.TRUE);
                return mongos.hello(reply);
            }
            if (command.equalsIgnoreCase("isMaster")) {
                return mongos.hello(super.handleCommand(channel, database, command, query));
            }
            ChangeStreamOplog history = changes;
            if (history == null) {
                return super.handleCommand(channel, database, command, query);
            }
            boolean admin = database.equals("admin");
            if (admin && command.equalsIgnoreCase("truncateChangeHistory")) {
                return history.truncate(); // test-only extension, see docs/testing.md
            } else if (command.equalsIgnoreCase("aggregate") && isChangeStream(query)) {
                return openChangeStream(channel, database, command, query);
            } else if (command.equalsIgnoreCase("killCursors")) {
                Document reply = super.handleCommand(channel, database, command, query);
                history.wakeWaiters();
                return reply;
            } else if (command.equalsIgnoreCase("getMore")) {
                Document reply = super.handleCommand(channel, database, command, query);
                attachPostBatchResumeToken(reply, false);
                return reply;
            } else if (admin) {
                if (command.equalsIgnoreCase("renameCollection")) {
                    return renameCollection(channel, database, command, query, history);
                }
                return super.handleCommand(channel, database, command, query);
            } else if (command.equalsIgnoreCase("insert")) {
                return insert(channel, database, command, query, history);
            } else if (command.equalsIgnoreCase("update") || command.equalsIgnoreCase("delete")) {
                MongoCollection<?> collection =
                    collectionForWrite(database, query.get(command), command.equalsIgnoreCase("update"));
                ChangeStreamOplog.CURRENT_COLLECTION.set(collection);
                // pipelines travel to the collection wrapped: the library casts each update to a document
                Document statements = command.equalsIgnoreCase("update") ? UpdatePipeline.wrapStatements(query) : query;
                return super.handleCommand(channel, database, command, statements);
            } else if (command.equalsIgnoreCase("findAndModify")) {
                return findAndModify(channel, database, command, query, history);
            } else if (command.equalsIgnoreCase("dropDatabase")) {
                boolean existed = listDatabaseNames().contains(database);
                Document reply = super.handleCommand(channel, database, command, query);
                if (existed) {
                    history.recordDropDatabase(database);
                }
                return reply;
            }
            return super.handleCommand(channel, database, command, query);
        }

        private static boolean isChangeStream(Document query) {
            Object pipeline = query.get("pipeline");
            if (pipeline instanceof List && !((List<?>) pipeline).isEmpty()) {
                Object first = ((List<?>) pipeline).get(0);
                return first instanceof Document && ((Document) first).containsKey("$changeStream");
            }
            return false;
        }

        private Document openChangeStream(Channel channel, String database, String command, Document given) {
            Document query = given;
            List<Object> unsplit = SplitLargeEvent.withoutStage((List<?>) given.get("pipeline"), reportedVersion);
            if (unsplit != null) { // the library knows no such stage: the history splits the events
                query = new Document(given);
                query.put("pipeline", unsplit);
                ChangeStreamOplog.OPEN_SPLIT.set(Boolean.TRUE);
            }
            Object target = query.get(command);
            Document spec = (Document) ((Document) ((List<?>) query.get("pipeline")).get(0)).get("$changeStream");
            boolean admin = database.equals("admin");
            if (target instanceof Number) {
                if (admin) {
                    if (!Utils.isTrue(spec.get("allChangesForCluster"))) {
                        throw new MongoServerError(73, "InvalidNamespace",
                            "$changeStream may not be opened on the internal admin database");
                    }
                    ChangeStreamOplog.OPEN_SCOPE.set(ChangeStreamOplog.Scope.cluster());
                } else {
                    ChangeStreamOplog.OPEN_SCOPE.set(ChangeStreamOplog.Scope.database(database));
                }
            } else if (admin || database.equals("local") || database.equals("config")) {
                throw new MongoServerError(73, "InvalidNamespace",
                    "$changeStream may not be opened on the internal " + database + " database");
            } else {
                ChangeStreamOplog.OPEN_SCOPE.set(ChangeStreamOplog.Scope.collection(database, String.valueOf(target)));
            }
            Document reply = admin
                // the library routes admin commands elsewhere; a cluster-wide stream is an aggregate like any other
                ? resolveDatabase(database).handleCommand(channel, command, query, this::resolveDatabase, oplog)
                : super.handleCommand(channel, database, command, query);
            attachPostBatchResumeToken(reply, true);
            return reply;
        }

        /** postBatchResumeToken as MongoDB 4.0.7+ sends it; closes the cursor after an invalidate. */
        private void attachPostBatchResumeToken(Document reply, boolean firstBatch) {
            ChangeStreamOplog.StreamCursor cursor = ChangeStreamOplog.lastCursor();
            if (cursor == null || reply == null || !(reply.get("cursor") instanceof Document)) {
                return;
            }
            Document cursorDocument = (Document) reply.get("cursor");
            cursorDocument.put("postBatchResumeToken", cursor.postBatchResumeToken());
            if (firstBatch && cursor.isEmpty()) {
                cursorDocument.put("id", 0L);
                getCursorRegistry().remove(cursor);
            }
        }

        /**
         * The collection a write goes to, created if asked (as the library would), or null for
         * names the library rejects. Resolved before the write takes the collection's monitor.
         */
        private MongoCollection<?> collectionForWrite(String database, Object name, boolean create) {
            if (!(name instanceof String)) {
                return null;
            }
            String collectionName = (String) name;
            if (collectionName.isEmpty() || collectionName.startsWith("system.") || collectionName.contains("$")) {
                return null;
            }
            try {
                MongoDatabase db = resolveDatabase(database);
                synchronized (db) { // the library's databases create collections under their monitor
                    MongoCollection<?> collection = db.resolveCollection(collectionName, false);
                    if (collection == null && create) {
                        collection = db.createCollectionOrThrowIfExists(collectionName);
                    }
                    return collection;
                }
            } catch (MongoServerException e) {
                return null; // let the library report the problem
            }
        }

        /**
         * Insert under the collection's monitor, so that the events are recorded before anyone can
         * see, update or delete the documents, and only for the documents that were inserted.
         */
        private Document insert(Channel channel, String database, String command, Document query,
                                ChangeStreamOplog history) {
            MongoCollection<?> collection = collectionForWrite(database, query.get(command), true);
            if (collection == null) {
                return super.handleCommand(channel, database, command, query);
            }
            synchronized (collection) {
                List<Document> passed = ChangeStreamOplog.beginInsertCapture();
                Document reply;
                try {
                    reply = super.handleCommand(channel, database, command, query);
                } finally {
                    ChangeStreamOplog.endInsertCapture();
                }
                Set<Integer> failed = new HashSet<>();
                int firstFailure = Integer.MAX_VALUE;
                Object writeErrors = reply.get("writeErrors");
                if (writeErrors instanceof List) {
                    for (Object error : (List<?>) writeErrors) {
                        int index = ((Number) ((Document) error).get("index")).intValue();
                        failed.add(index);
                        firstFailure = Math.min(firstFailure, index);
                    }
                }
                boolean ordered = Utils.isTrue(query.get("ordered")); // as the library reads it
                List<Document> inserted = new ArrayList<>();
                for (int i = 0; i < passed.size(); i++) {
                    if (!failed.contains(i) && !(ordered && i > firstFailure)) {
                        inserted.add(passed.get(i));
                    }
                }
                history.recordInserts(collection.getFullName(), inserted);
                return reply;
            }
        }

        /** The library's findAndModify records nothing; derive the event from before and after. */
        private Document findAndModify(Channel channel, String database, String command, Document query,
                                       ChangeStreamOplog history) {
            MongoCollection<?> collection = collectionForWrite(database, query.get(command), true);
            if (collection == null) {
                return super.handleCommand(channel, database, command, query);
            }
            boolean remove = Utils.isTrue(query.get("remove"));
            Object update = query.get("update");
            Document selector = query.get("query") instanceof Document ? (Document) query.get("query") : new Document();
            synchronized (collection) {
                Document match = new Document("query", selector);
                if (query.get("sort") != null) {
                    match.put("orderby", query.get("sort"));
                }
                Document before = null;
                for (Document document : collection.handleQuery(new QueryParameters(match, 0, 1))) {
                    before = document.cloneDeeply();
                    break;
                }
                ChangeStreamOplog.CURRENT_COLLECTION.set(collection);
                Document reply = super.handleCommand(channel, database, command, query);
                String ns = collection.getFullName();
                if (remove) {
                    if (before != null && reply.get("value") != null) {
                        history.recordDeletes(ns, List.of(before.get("_id")));
                    }
                } else if (before != null && update instanceof List) { // a pipeline
                    history.recordRewrites(ns, List.of(before), collection);
                } else if (before != null && update instanceof Document) {
                    Object id = before.get("_id");
                    Document after = ChangeStreamOplog.findById(collection, id);
                    if (after != null && !after.equals(before)) {
                        history.recordUpdates(ns, (Document) update, List.of(id), collection);
                    }
                } else if (before == null && Utils.isTrue(query.get("upsert"))) {
                    Object id = upsertedId(collection, selector, reply);
                    Document inserted = id == null ? null : ChangeStreamOplog.findById(collection, id);
                    if (inserted != null) {
                        history.recordInserts(ns, List.of(inserted));
                        reply.put("lastErrorObject", new Document("n", 1)
                            .append("updatedExisting", Boolean.FALSE)
                            .append("upserted", id));
                    }
                }
                return reply;
            }
        }

        /** _id of the document an upserting findAndModify inserted (no document matched before). */
        private static Object upsertedId(MongoCollection<?> collection, Document selector, Document reply) {
            Object value = reply.get("value");
            if (value instanceof Document && ((Document) value).containsKey("_id")) {
                return ((Document) value).get("_id");
            }
            Object id = selector.get("_id");
            if (id != null && !(id instanceof Document && ((Document) id).keySet().stream().anyMatch(k -> k.startsWith("$")))) {
                return id;
            }
            List<Object> ids = new ArrayList<>();
            for (Document document : collection.handleQuery(selector)) {
                ids.add(document.get("_id"));
            }
            return ids.size() == 1 ? ids.get(0) : null;
        }

        private Document renameCollection(Channel channel, String database, String command, Document query,
                                          ChangeStreamOplog history) {
            String from = String.valueOf(query.get(command));
            String to = String.valueOf(query.get("to"));
            int dot = from.indexOf('.');
            MongoCollection<?> source = dot < 0 ? null : existingCollection(from.substring(0, dot), from.substring(dot + 1));
            if (source == null || from.equals(to)) {
                return super.handleCommand(channel, database, command, query);
            }
            synchronized (source) {
                Document reply = super.handleCommand(channel, database, command, query);
                history.recordRename(from, to);
                return reply;
            }
        }

        /** The error document the library would send, plus the fields added to every reply. */
        private static Document errorReply(MongoServerException e) {
            Document reply = new Document();
            reply.put("$err", e.getMessageWithoutErrorCode());
            reply.put("errmsg", e.getMessageWithoutErrorCode());
            if (e instanceof MongoServerError) {
                reply.put("code", ((MongoServerError) e).getCode());
                reply.putIfNotNull("codeName", ((MongoServerError) e).getCodeName());
            }
            reply.put("ok", 0);
            return reply;
        }
    }

    public static void main(String[] args) throws Exception {
        String host = args.length > 0 ? args[0] : "127.0.0.1";
        int port = args.length > 1 ? Integer.parseInt(args[1]) : 27017;
        long maxEvents = args.length > 2 ? Long.parseLong(args[2])
            : Long.getLong("oplog.maxEvents", DEFAULT_MAX_EVENTS);
        long cursorTimeoutMillis = Long.getLong("cursorTimeoutMillis", IdleCursors.DEFAULT_TIMEOUT_MS);
        boolean auth = Boolean.getBoolean("auth");
        ReportedVersion version = new ReportedVersion(System.getProperty("mongo.version", "6.0.0"));
        Backend backend = new Backend(maxEvents, cursorTimeoutMillis, version, auth);
        backend.version(version);
        MongoServer server = new MongoServer(backend);
        server.enableOplog();
        server.bind(host, port);
        System.out.println("listening " + host + ":" + port + " (change history: up to " + maxEvents
            + " events; idle cursors time out after " + cursorTimeoutMillis + " ms; access control "
            + (auth ? "on" : "off") + ")");
        Runtime.getRuntime().addShutdownHook(new Thread(server::shutdownNow));
        Thread.currentThread().join();
    }
}
