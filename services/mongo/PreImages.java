import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * Change-stream pre-images, as MongoDB 6 keeps them: only for a collection that has
 * {@code changeStreamPreAndPostImages: {enabled: true}} (set by {@code create} or by
 * {@code collMod}), the document before each update, replace or delete, delivered as the event's
 * {@code fullDocumentBeforeChange} to a stream that asks for it ({@code whenAvailable}); null for
 * any other collection. {@code listCollections} shows the option as MongoDB does.
 *
 * <p>A collMod with any other option is left to the library (which has none: 59). The documents
 * are taken from the collection before the write (see IdIndexedMemory.Collection) on the writing
 * thread, and attached to the events the same command records.
 */
final class PreImages {
    private PreImages() {
    }

    static final String OPTION = "changeStreamPreAndPostImages";
    /** Fields of a command that are not options of it. */
    private static final Set<String> GENERIC = Set.of("writeConcern", "comment", "lsid", "txnNumber",
        "autocommit", "apiVersion", "apiStrict", "apiDeprecationErrors", "maxTimeMS");

    /** "db.coll" of the collections with pre-images enabled. */
    private static final Set<String> ENABLED = ConcurrentHashMap.newKeySet();
    /** Pre-images taken by the current command, by namespace and _id. */
    private static final ThreadLocal<Map<String, Map<Object, Document>>> TAKEN = new ThreadLocal<>();

    static boolean enabled(String namespace) {
        return ENABLED.contains(namespace);
    }

    /** The command is a collMod of this option alone. */
    static boolean handlesCollMod(String command, Document query) {
        if (!command.equalsIgnoreCase("collMod") || !query.containsKey(OPTION)) {
            return false;
        }
        for (String key : query.keySet()) {
            if (!key.equals(command) && !key.equals(OPTION) && !key.startsWith("$") && !GENERIC.contains(key)) {
                return false; // e.g. a validator: this server has none (59), as before
            }
        }
        return true;
    }

    /** {collMod: coll, changeStreamPreAndPostImages: {enabled: bool}} on an existing collection. */
    static Document collMod(String database, Document query, boolean exists) {
        Object name = query.get("collMod");
        if (!(name instanceof String) || !exists) {
            throw new MongoServerError(26, "NamespaceNotFound", "ns does not exist: " + database + "." + name);
        }
        set(database + "." + name, enabledOf(query.get(OPTION)));
        return new Document("ok", 1.0);
    }

    /**
     * A create with the option: the option is taken out (the library does not know it) and kept
     * for the namespace once the library created the collection. Returns the query to pass on.
     */
    static Document beforeCreate(Document query) {
        if (!query.containsKey(OPTION)) {
            return query;
        }
        enabledOf(query.get(OPTION)); // refused before anything is created
        Document rest = new Document(query);
        rest.remove(OPTION);
        return rest;
    }

    static void afterCreate(String database, Document query, Document reply) {
        if (query.containsKey(OPTION) && reply != null && isOk(reply)) {
            set(database + "." + query.get("create"), enabledOf(query.get(OPTION)));
        }
    }

    /** The option follows the collection: gone with a drop, moved by a rename. */
    static void afterDrop(String namespace) {
        ENABLED.remove(namespace);
    }

    static void afterDropDatabase(String database) {
        ENABLED.removeIf(ns -> ns.startsWith(database + "."));
    }

    static void afterRename(String from, String to) {
        if (ENABLED.remove(from)) {
            ENABLED.add(to);
        }
    }

    /** listCollections shows the option of each collection that has it, as MongoDB does. */
    static void showIn(String database, Document reply) {
        if (ENABLED.isEmpty() || reply == null || !(reply.get("cursor") instanceof Document cursor)
            || !(cursor.get("firstBatch") instanceof List<?> batch)) {
            return;
        }
        for (Object entry : batch) {
            if (entry instanceof Document info && enabled(database + "." + info.get("name"))) {
                Document options = info.get("options") instanceof Document o ? o : new Document();
                options.put(OPTION, new Document("enabled", Boolean.TRUE));
                info.put("options", options);
            }
        }
    }

    /** Called with a stored document about to be changed or removed by the current command. */
    static void take(String namespace, Document before) {
        if (before == null || !enabled(namespace)) {
            return;
        }
        Map<String, Map<Object, Document>> taken = TAKEN.get();
        if (taken == null) {
            taken = new HashMap<>();
            TAKEN.set(taken);
        }
        taken.computeIfAbsent(namespace, k -> new HashMap<>()).put(before.get("_id"), before.cloneDeeply());
    }

    /** The pre-image of the document with this _id that the current command changed, or null. */
    static Document of(String namespace, Object id) {
        Map<String, Map<Object, Document>> taken = TAKEN.get();
        Map<Object, Document> documents = taken == null ? null : taken.get(namespace);
        return documents == null ? null : documents.remove(id);
    }

    static void clear() {
        TAKEN.remove();
    }

    private static void set(String namespace, boolean on) {
        if (on) {
            ENABLED.add(namespace);
        } else {
            ENABLED.remove(namespace);
        }
    }

    private static boolean enabledOf(Object option) {
        if (!(option instanceof Document document) || !(document.get("enabled") instanceof Boolean on)) {
            throw new MongoServerError(40414, "Location40414",
                "BSON field '" + OPTION + ".enabled' is missing but a required field");
        }
        if (document.size() > 1) {
            throw new MongoServerError(40415, "Location40415",
                "BSON field '" + OPTION + "." + document.keySet().stream().filter(k -> !k.equals("enabled"))
                    .findFirst().orElse("") + "' is an unknown field.");
        }
        return on;
    }

    private static boolean isOk(Document reply) {
        return reply.get("ok") instanceof Number ok && ok.doubleValue() == 1.0;
    }
}
