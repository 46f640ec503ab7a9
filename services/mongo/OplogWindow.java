import java.time.Instant;
import java.util.ArrayList;
import java.util.List;

import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * {@code local.oplog.rs} as far as its window goes: a find there returns the first and the last
 * entry (no-op entries at the start of the change history and at its latest timestamp), sorted
 * by {@code $natural} or {@code ts}, so the query rs.printReplicationInfo() makes to measure the
 * oplog window ({@code find().sort({$natural: 1}).limit(1)}, and again with -1) works here as on
 * a replica set. Other queries of the oplog are refused.
 */
final class OplogWindow {
    private final ChangeStreamOplog history;

    OplogWindow(ChangeStreamOplog history) {
        this.history = history;
    }

    static boolean handles(String database, String command, Document query) {
        return database.equals("local") && command.equalsIgnoreCase("find") && "oplog.rs".equals(query.get("find"));
    }

    Document find(Document query) {
        if (query.get("filter") instanceof Document filter && !filter.isEmpty()) {
            throw new MongoServerError(2, "BadValue",
                "this test server answers only the first and last entries of local.oplog.rs, without a filter");
        }
        int direction = 1;
        if (query.get("sort") instanceof Document sort && !sort.isEmpty()) {
            Object order = sort.containsKey("$natural") ? sort.get("$natural") : sort.get("ts");
            if (!(order instanceof Number n) || sort.size() != 1) {
                throw new MongoServerError(2, "BadValue", "local.oplog.rs sorts only by $natural or ts here");
            }
            direction = n.intValue() < 0 ? -1 : 1;
        }
        List<Document> entries = new ArrayList<>();
        BsonTimestamp first = history.oldestResumePoint();
        BsonTimestamp last = history.operationTime();
        entries.add(entry(first, "start of the change history"));
        if (last.getValue() != first.getValue()) {
            entries.add(entry(last, "latest operation"));
        }
        if (direction < 0) {
            java.util.Collections.reverse(entries);
        }
        Object limit = query.get("limit");
        if (limit instanceof Number n && n.intValue() != 0 && Math.abs(n.intValue()) < entries.size()) {
            entries = entries.subList(0, Math.abs(n.intValue()));
        }
        Document cursor = new Document("firstBatch", new ArrayList<>(entries)).append("id", 0L)
            .append("ns", "local.oplog.rs");
        return new Document("cursor", cursor).append("ok", 1.0);
    }

    private static Document entry(BsonTimestamp ts, String message) {
        return new Document("op", "n").append("ns", "").append("o", new Document("msg", message))
            .append("ts", ts).append("t", 1L).append("v", 2L)
            .append("wall", Instant.ofEpochSecond(ts.getValue() >>> 32));
    }
}
