import java.util.List;
import java.util.function.BiFunction;

import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * An oplog hole, held open by a test: a write whose oplog timestamp T1 is reserved now and which
 * commits later, while writes after it get T2 > T1 and are applied at once. That is how a
 * primary's oplog looks while a write that took its timestamp early (a long insert, a
 * transaction's commit) has not committed yet: readers of the oplog, change streams among them,
 * see nothing from T1 on (the "all durable" point, which bounds the majority commit point too),
 * while the last applied time (every reply's operationTime) is already T2
 * (src/mongo/db/repl/oplog.cpp advances lastApplied on each commit, holes or not), and a new
 * change stream starts after T2 (DocumentSourceChangeStream::getStartTimeForNewStream).
 *
 * <p>Test-only commands, on admin:
 * <pre>{holdOplogHole: "DB", write: {insert: "items", documents: [{_id: 1}]}}   reply: {ts: T1}
 * {releaseOplogHole: 1}   runs the write; its event has timestamp T1; reply: the write's reply</pre>
 * The write is one insert of one document, one update statement with multi false or one delete
 * with limit 1 (one event at most). Until released it has not happened: the document is neither
 * written nor visible.
 */
final class OplogHole {
    private record Held(String database, String command, Document write, long ts) {
    }

    private final ChangeStreamOplog history;
    private Held held; // guarded by this

    OplogHole(ChangeStreamOplog history) {
        this.history = history;
    }

    static boolean handles(String database, String command) {
        return database.equals("admin")
            && (command.equalsIgnoreCase("holdOplogHole") || command.equalsIgnoreCase("releaseOplogHole"));
    }

    /**
     * @param run runs a write command (database, command document) as any client's would run
     */
    synchronized Document handle(String command, Document query, BiFunction<String, Document, Document> run) {
        if (command.equalsIgnoreCase("holdOplogHole")) {
            return hold(query);
        }
        if (held == null) {
            throw new MongoServerError(2, "BadValue", "no oplog hole is held open");
        }
        Held write = held;
        held = null;
        Document reply = history.fillHole(() -> run.apply(write.database(), write.write()));
        reply.put("ts", new BsonTimestamp(write.ts()));
        return reply;
    }

    private Document hold(Document query) {
        if (!(query.get("holdOplogHole") instanceof String database) || !(query.get("write") instanceof Document write)
            || write.isEmpty()) {
            throw new MongoServerError(2, "BadValue", "holdOplogHole takes a database name and write: {a write command}");
        }
        String command = write.keySet().iterator().next();
        if (!singleEvent(command, write)) {
            throw new MongoServerError(2, "BadValue", "the write in an oplog hole is one insert of one document, one "
                + "update with multi: false or one delete with limit: 1: " + write);
        }
        if (held != null) {
            throw new MongoServerError(2, "BadValue", "an oplog hole is already held open");
        }
        long ts = history.reserveHole();
        held = new Held(database, command, write, ts);
        return new Document("ts", new BsonTimestamp(ts)).append("ok", 1.0);
    }

    private static boolean singleEvent(String command, Document write) {
        return switch (command) {
            case "insert" -> write.get("documents") instanceof List<?> documents && documents.size() == 1;
            case "update" -> write.get("updates") instanceof List<?> updates && updates.size() == 1
                && updates.get(0) instanceof Document statement && !Boolean.TRUE.equals(statement.get("multi"));
            case "delete" -> write.get("deletes") instanceof List<?> deletes && deletes.size() == 1
                && deletes.get(0) instanceof Document statement && statement.get("limit") instanceof Number limit
                && limit.intValue() == 1;
            default -> false;
        };
    }
}
