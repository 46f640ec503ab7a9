import java.util.LinkedHashMap;
import java.util.Map;
import java.util.function.LongConsumer;
import java.util.function.LongSupplier;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * {@code setParameter} and {@code getParameter} on the admin database, as MongoDB answers them,
 * for the server parameters this launcher implements (numeric ones: {@code cursorTimeoutMillis}).
 * An unknown parameter is refused (72 InvalidOptions), as MongoDB refuses it.
 */
final class ServerParameters {
    private final Map<String, LongSupplier> getters = new LinkedHashMap<>();
    private final Map<String, LongConsumer> setters = new LinkedHashMap<>();

    void add(String name, LongSupplier get, LongConsumer set) {
        getters.put(name, get);
        setters.put(name, set);
    }

    static boolean handles(String command) {
        return command.equalsIgnoreCase("setParameter") || command.equalsIgnoreCase("getParameter");
    }

    Document handle(String database, String command, Document query) {
        if (!database.equals("admin")) {
            throw new MongoServerError(13, "Unauthorized", command + " may only be run against the admin database.");
        }
        return command.equalsIgnoreCase("setParameter") ? set(query) : get(query);
    }

    private Document set(Document query) {
        Document reply = new Document();
        for (Map.Entry<String, Object> entry : query.entrySet()) {
            String name = entry.getKey();
            if (name.equalsIgnoreCase("setParameter") || name.startsWith("$") || name.equals("comment")) {
                continue;
            }
            LongConsumer setter = setters.get(name);
            if (setter == null) {
                throw new MongoServerError(72, "InvalidOptions",
                    "attempted to set unrecognized parameter [" + name + "], use help:true to see options ");
            }
            if (!(entry.getValue() instanceof Number value) || value.doubleValue() != Math.rint(value.doubleValue())) {
                throw new MongoServerError(2, "BadValue", "Invalid value for parameter " + name + ": " + entry.getValue());
            }
            reply.put("was", getters.get(name).getAsLong());
            try {
                setter.accept(value.longValue());
            } catch (IllegalArgumentException e) {
                throw new MongoServerError(2, "BadValue", e.getMessage());
            }
        }
        if (!reply.containsKey("was")) {
            throw new MongoServerError(2, "BadValue", "no option found to set, use help:true to see options ");
        }
        reply.put("ok", 1.0);
        return reply;
    }

    private Document get(Document query) {
        boolean all = "*".equals(query.get("getParameter"));
        Document reply = new Document();
        for (Map.Entry<String, LongSupplier> parameter : getters.entrySet()) {
            if (all || query.containsKey(parameter.getKey())) {
                reply.put(parameter.getKey(), parameter.getValue().getAsLong());
            }
        }
        if (reply.isEmpty()) {
            throw new MongoServerError(72, "InvalidOptions", "no option found to get");
        }
        reply.put("ok", 1.0);
        return reply;
    }
}
