import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * The server answering as a standalone mongod (no {@code --replSet}) answers what the tool
 * needs of a replica set: a change stream is refused, with MongoDB's code and message
 * (src/mongo/db/pipeline/document_source_change_stream.cpp, 40573), so that a test can see the
 * tool refuse a standalone deployment. Without it this server opens change streams, which no
 * standalone mongod does.
 *
 * <p>Test-only, on admin: {@code {setStandaloneMode: true}} (false to go back). While on, an
 * {@code aggregate} whose pipeline starts with {@code $changeStream} fails with 40573
 * "The $changeStream stage is only supported on replica sets".
 */
final class StandaloneMode {
    static final int CHANGE_STREAM_NEEDS_REPLICA_SET = 40573;
    private volatile boolean on;

    static boolean handles(String database, String command) {
        return database.equals("admin") && command.equalsIgnoreCase("setStandaloneMode");
    }

    Document configure(Document query) {
        Object given = query.get("setStandaloneMode");
        if (!(given instanceof Boolean flag)) {
            throw new MongoServerError(2, "BadValue", "setStandaloneMode takes true or false: " + given);
        }
        boolean was = on;
        on = flag;
        return new Document("was", was).append("ok", 1.0);
    }

    /** Refuses a change stream while on. */
    void check(boolean changeStream) {
        if (on && changeStream) {
            throw new MongoServerError(CHANGE_STREAM_NEEDS_REPLICA_SET, "Location40573",
                "The $changeStream stage is only supported on replica sets");
        }
    }
}
