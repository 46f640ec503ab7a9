import java.util.HashSet;
import java.util.List;
import java.util.Set;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * MongoDB's {@code failCommand} fail point (a test command of mongod started with
 * enableTestCommands), so tests can make a command fail as a real deployment would, e.g. a
 * collMod refused for lack of privileges:
 *
 * <pre>{configureFailPoint: "failCommand", mode: "alwaysOn" | "off" | {times: N},
 *  data: {failCommands: ["collMod"], errorCode: 13}}</pre>
 *
 * on the admin database. The command named fails with that code before it runs.
 */
final class FailCommand {
    private static final String MESSAGE = "Failing command via 'failCommand' failpoint";

    private Set<String> commands = Set.of(); // guarded by this
    private int errorCode;
    private long remaining; // Long.MAX_VALUE: alwaysOn

    static boolean handles(String database, String command) {
        return database.equals("admin") && command.equalsIgnoreCase("configureFailPoint");
    }

    synchronized Document configure(Document query) {
        if (!"failCommand".equals(query.get("configureFailPoint"))) {
            throw new MongoServerError(2, "BadValue", "unknown fail point: " + query.get("configureFailPoint")
                + " (this test server knows failCommand)");
        }
        Object mode = query.get("mode");
        long times;
        if ("off".equals(mode)) {
            times = 0;
        } else if ("alwaysOn".equals(mode)) {
            times = Long.MAX_VALUE;
        } else if (mode instanceof Document document && document.get("times") instanceof Number n && n.longValue() > 0) {
            times = n.longValue();
        } else {
            throw new MongoServerError(2, "BadValue", "mode must be \"off\", \"alwaysOn\" or {times: N > 0}: " + mode);
        }
        Set<String> names = new HashSet<>();
        int code = 0;
        if (times > 0) {
            Document data = query.get("data") instanceof Document d ? d : new Document();
            if (!(data.get("failCommands") instanceof List<?> list) || list.isEmpty()
                || !(data.get("errorCode") instanceof Number number)) {
                throw new MongoServerError(2, "BadValue", "data needs failCommands (names) and errorCode");
            }
            for (Object name : list) {
                names.add(String.valueOf(name).toLowerCase());
            }
            code = number.intValue();
        }
        commands = names;
        errorCode = code;
        remaining = times;
        return new Document("count", 0).append("ok", 1.0);
    }

    /** Throws the configured error when {@code command} is to fail now. */
    synchronized void check(String command) {
        if (remaining <= 0 || !commands.contains(command.toLowerCase())) {
            return;
        }
        if (remaining != Long.MAX_VALUE) {
            remaining--;
        }
        throw new MongoServerError(errorCode, MESSAGE);
    }
}
