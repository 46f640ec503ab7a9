import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;

import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * {@code replSetGetStatus} as a replica set's primary answers it, with secondaries whose lag a
 * test sets, so that a throttle on replication lag is exercised through the real client path.
 *
 * <p>Until a test configures secondaries the server answers as a standalone mongod does (76
 * NoReplicationEnabled). The test-only command, on the admin database:
 *
 * <pre>{setSecondaryLag: [SECONDS, ...]}</pre>
 *
 * makes one secondary per element, each that many seconds behind the primary's optime;
 * {@code []} goes back to answering as a standalone.
 */
final class ReplicaSetStatus {
    private List<Double> lags = List.of(); // guarded by this

    static boolean handles(String database, String command) {
        return database.equals("admin")
            && (command.equalsIgnoreCase("replSetGetStatus") || command.equalsIgnoreCase("setSecondaryLag"));
    }

    synchronized Document handle(String command, Document query, Instant now) {
        return command.equalsIgnoreCase("setSecondaryLag") ? configure(query) : status(now);
    }

    private Document configure(Document query) {
        if (!(query.get("setSecondaryLag") instanceof List<?> given)) {
            throw new MongoServerError(2, "BadValue", "setSecondaryLag takes a list of seconds, one per secondary");
        }
        List<Double> parsed = new ArrayList<>();
        for (Object lag : given) {
            if (!(lag instanceof Number number) || number.doubleValue() < 0) {
                throw new MongoServerError(2, "BadValue", "a secondary's lag must be a number of seconds >= 0: " + lag);
            }
            parsed.add(number.doubleValue());
        }
        lags = List.copyOf(parsed);
        return new Document("ok", 1.0);
    }

    private Document status(Instant now) {
        if (lags.isEmpty()) {
            throw new MongoServerError(76, "NoReplicationEnabled", "not running with --replSet");
        }
        List<Document> members = new ArrayList<>();
        members.add(member(0, "PRIMARY", 1, now).append("self", Boolean.TRUE));
        for (int i = 0; i < lags.size(); i++) {
            Instant optime = now.minus(Duration.ofMillis(Math.round(lags.get(i) * 1000)));
            members.add(member(i + 1, "SECONDARY", 2, optime));
        }
        return new Document("set", "local").append("date", now).append("myState", 1)
            .append("term", 1L).append("members", members).append("ok", 1.0);
    }

    private static Document member(int id, String state, int code, Instant optime) {
        Instant second = Instant.ofEpochSecond(optime.getEpochSecond());
        return new Document("_id", id).append("name", "member-" + id + ".local:27017")
            .append("health", 1.0).append("state", code).append("stateStr", state)
            .append("optime", new Document("ts", new BsonTimestamp(second, 1)).append("t", 1L))
            .append("optimeDate", optime);
    }
}
