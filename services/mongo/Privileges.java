import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * A user without some privileges, for tests: the server has no authentication, so a test
 * declares what the connected "user" lacks, and the commands needing it are refused as MongoDB
 * refuses them to such a user: 13 Unauthorized, "not authorized on DB to execute command
 * { ... }" (the command rendered as the server's log shows it, e.g. the clusterMonitor-less
 * user in MongoDB's forums: "not authorized on local to execute command { aggregate:
 * \"system.replset\", ... $db: \"local\" }").
 *
 * <p>The test-only command, on admin, takes privileges in the shape of MongoDB's role
 * definitions ({@code {resource, actions}}); {@code []} grants everything again:
 *
 * <pre>{setDeniedPrivileges: [{resource: {cluster: true}, actions: ["replSetGetStatus", "replSetGetConfig"]},
 *                        {resource: {db: "local", collection: "oplog.rs"}, actions: ["find"]}]}</pre>
 *
 * A cluster action is the command's name; on a collection ({@code db}/{@code collection}, ""
 * meaning any) find, count, distinct and aggregate need "find" (a change stream
 * "changeStream"), insert "insert", update and findAndModify "update", delete "remove", any
 * other command its own name.
 */
final class Privileges {
    private record Denied(boolean cluster, String db, String collection, List<String> actions) {
    }

    private volatile List<Denied> denied = List.of();

    static boolean handles(String database, String command) {
        return database.equals("admin") && command.equalsIgnoreCase("setDeniedPrivileges");
    }

    Document configure(Document query) {
        if (!(query.get("setDeniedPrivileges") instanceof List<?> given)) {
            throw badValue("setDeniedPrivileges takes a list of {resource, actions}");
        }
        List<Denied> parsed = new ArrayList<>();
        for (Object privilege : given) {
            if (!(privilege instanceof Document p) || !(p.get("resource") instanceof Document resource)
                || !(p.get("actions") instanceof List<?> actions) || actions.isEmpty()) {
                throw badValue("a privilege is {resource: {cluster: true} | {db, collection}, actions: [...]}: "
                    + privilege);
            }
            List<String> names = actions.stream().map(a -> String.valueOf(a).toLowerCase(Locale.ROOT)).toList();
            boolean cluster = Boolean.TRUE.equals(resource.get("cluster"));
            parsed.add(new Denied(cluster, cluster ? null : String.valueOf(resource.getOrDefault("db", "")),
                cluster ? null : String.valueOf(resource.getOrDefault("collection", "")), names));
        }
        denied = List.copyOf(parsed);
        return new Document("ok", 1.0);
    }

    /** Throws 13 Unauthorized when the declared user may not run {@code command}. */
    void check(String database, String command, Document query) {
        List<Denied> current = denied;
        if (current.isEmpty()) {
            return;
        }
        String action = action(command, query);
        Object target = query.get(command);
        String collection = target instanceof String name ? name : "";
        for (Denied privilege : current) {
            boolean applies = privilege.cluster()
                || (matches(privilege.db(), database) && matches(privilege.collection(), collection));
            if (applies && privilege.actions().contains(action)) {
                throw new MongoServerError(13, "Unauthorized",
                    "not authorized on " + database + " to execute command " + CommandText.of(query));
            }
        }
    }

    private static boolean matches(String declared, String actual) {
        return declared.isEmpty() || declared.equals(actual);
    }

    private static String action(String command, Document query) {
        String name = command.toLowerCase(Locale.ROOT);
        return switch (name) {
            case "find", "count", "distinct" -> "find";
            case "aggregate" -> isChangeStream(query) ? "changestream" : "find";
            case "findandmodify" -> "update";
            case "delete" -> "remove";
            default -> name;
        };
    }

    private static boolean isChangeStream(Document query) {
        return query.get("pipeline") instanceof List<?> pipeline && !pipeline.isEmpty()
            && pipeline.get(0) instanceof Document first && first.containsKey("$changeStream");
    }

    private static MongoServerError badValue(String message) {
        return new MongoServerError(2, "BadValue", message);
    }
}
