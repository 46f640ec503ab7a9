import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Objects;
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
 *
 * <p>A local-only option, a test device no MongoDB has: {@code data: {failCommands:
 * ["update"], codelessWriteErrorFor: ID}} answers an update command that has a statement on
 * that {@code _id} (its filter's {@code _id}, or that of a filter in its top-level
 * {@code $and}) with {@code ok: 1, n: 0, nModified: 0} and a write error that has no
 * {@code code}, {@code writeErrors: [{index: i, errmsg: ...}]}, one per such statement; none of
 * the command's statements runs. MongoDB always sends a code; this server once did not, and
 * the driver could not read the reply (pymongo raises {@code KeyError: 'code'}).
 */
final class FailCommand {
    private static final String MESSAGE = "Failing command via 'failCommand' failpoint";
    static final String CODELESS_MESSAGE = "write error without a code, by the failCommand fail point";

    private Set<String> commands = Set.of(); // guarded by this
    private int errorCode;
    private Object codelessFor; // the _id whose statements get a write error without a code
    private boolean codeless;
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
        boolean withoutCode = false;
        Object id = null;
        if (times > 0) {
            Document data = query.get("data") instanceof Document d ? d : new Document();
            withoutCode = data.containsKey("codelessWriteErrorFor");
            id = data.get("codelessWriteErrorFor");
            if (!(data.get("failCommands") instanceof List<?> list) || list.isEmpty()
                || !(withoutCode || data.get("errorCode") instanceof Number)) {
                throw new MongoServerError(2, "BadValue",
                    "data needs failCommands (names) and errorCode (or codelessWriteErrorFor)");
            }
            for (Object name : list) {
                names.add(String.valueOf(name).toLowerCase());
            }
            code = withoutCode ? 0 : ((Number) data.get("errorCode")).intValue();
        }
        commands = names;
        errorCode = code;
        codeless = withoutCode;
        codelessFor = id;
        remaining = times;
        return new Document("count", 0).append("ok", 1.0);
    }

    /**
     * Throws the configured error when {@code command} is to fail now; returns the reply when
     * the fail point answers it instead (a write error without a code); null: run it.
     */
    synchronized Document check(String command, Document query) {
        if (remaining <= 0 || !commands.contains(command.toLowerCase())) {
            return null;
        }
        Document reply = null;
        if (codeless) {
            reply = codelessWriteErrors(command, query);
            if (reply == null) {
                return null;
            }
        }
        if (remaining != Long.MAX_VALUE) {
            remaining--;
        }
        if (reply != null) {
            return reply;
        }
        throw new MongoServerError(errorCode, MESSAGE);
    }

    /** The reply of an update command with a statement on {@link #codelessFor}; else null. */
    private Document codelessWriteErrors(String command, Document query) {
        if (!command.equalsIgnoreCase("update") || !(query.get("updates") instanceof List<?> updates)) {
            return null;
        }
        List<Document> errors = new ArrayList<>();
        for (int index = 0; index < updates.size(); index++) {
            if (updates.get(index) instanceof Document statement && pins(statement.get("q"))) {
                errors.add(new Document("index", index).append("errmsg", CODELESS_MESSAGE));
            }
        }
        if (errors.isEmpty()) {
            return null;
        }
        return new Document("n", 0).append("nModified", 0).append("writeErrors", errors).append("ok", 1.0);
    }

    /** Whether a statement's filter pins {@code _id} to {@link #codelessFor}. */
    private boolean pins(Object filter) {
        if (!(filter instanceof Document document)) {
            return false;
        }
        if (document.containsKey("_id") && Objects.equals(document.get("_id"), codelessFor)) {
            return true;
        }
        if (document.get("$and") instanceof List<?> parts) {
            return parts.stream().anyMatch(part -> part instanceof Document d
                && d.containsKey("_id") && Objects.equals(d.get("_id"), codelessFor));
        }
        return false;
    }
}
