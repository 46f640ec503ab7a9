import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * A test-only mode of the server, turned on and off by one command on admin:
 * {@code {<command>: true}} (false to go back), which answers what the mode was. The modes
 * ({@link MongosMode}, {@link StandaloneMode}) each say what the server does while theirs is on.
 */
final class ModeSwitch {
    private final String command;
    private volatile boolean on;

    ModeSwitch(String command) {
        this.command = command;
    }

    boolean handles(String database, String name) {
        return database.equals("admin") && name.equalsIgnoreCase(command);
    }

    Document configure(Document query) {
        Object given = query.get(command);
        if (!(given instanceof Boolean flag)) {
            throw new MongoServerError(2, "BadValue", command + " takes true or false: " + given);
        }
        boolean was = on;
        on = flag;
        return new Document("was", was).append("ok", 1.0);
    }

    boolean on() {
        return on;
    }
}
