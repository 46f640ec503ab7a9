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
    final ModeSwitch mode = new ModeSwitch("setStandaloneMode");

    /** Refuses a change stream while on. */
    void check(boolean changeStream) {
        if (mode.on() && changeStream) {
            throw new MongoServerError(CHANGE_STREAM_NEEDS_REPLICA_SET, "Location40573",
                "The $changeStream stage is only supported on replica sets");
        }
    }
}
