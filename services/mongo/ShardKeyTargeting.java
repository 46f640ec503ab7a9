import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentMap;
import java.util.concurrent.atomic.LongAdder;
import java.util.regex.Pattern;

import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.backend.Utils;
import de.bwaldvogel.mongo.bson.BsonRegularExpression;
import de.bwaldvogel.mongo.bson.Document;

/**
 * Counts, in mongos mode ({@link MongosMode}), the single-document writes a mongos could not
 * route to one shard: an update with {@code multi: false}, a delete with {@code limit: 1} or a
 * findAndModify whose filter does not pin every field of the collection's shard key by
 * equality. Before MongoDB 7.1 such a write is sent to every shard (with an exact {@code _id}
 * match) or refused; 7.1+ runs it through a slower two-phase protocol. The shard key is read
 * from the {@code config.collections} entry a test seeded ({@code {_id: "db.coll", key: {...}}};
 * an entry that is {@code dropped} or {@code unsplittable} (8.0: tracked, not sharded) does not
 * count).
 *
 * <p>This server's own figure, not MongoDB's: serverStatus's
 * {@code localMongo.untargetedSingleWrites} ({@code total}, and {@code byNamespace}).
 */
final class ShardKeyTargeting {
    private final LongAdder total = new LongAdder();
    private final ConcurrentMap<String, LongAdder> byNamespace = new ConcurrentHashMap<>();

    /**
     * @param configCollections config.collections, or null when there is none
     */
    void observe(String database, String command, Document query, MongoCollection<?> configCollections) {
        if (!(query.get(command) instanceof String collection)) {
            return;
        }
        String name = command.toLowerCase();
        List<Document> filters;
        if (name.equals("update")) {
            filters = statements(query.get("updates"), "q", statement -> !Boolean.TRUE.equals(statement.get("multi")));
        } else if (name.equals("delete")) {
            filters = statements(query.get("deletes"), "q",
                statement -> statement.get("limit") instanceof Number n && n.intValue() == 1);
        } else if (name.equals("findandmodify")) {
            filters = List.of(query.get("query") instanceof Document q ? q : new Document());
        } else {
            return;
        }
        if (filters.isEmpty()) {
            return;
        }
        String namespace = database + "." + collection;
        Document key = shardKey(configCollections, namespace);
        if (key == null) {
            return;
        }
        for (Document filter : filters) {
            if (!key.keySet().stream().allMatch(field -> pinned(filter, field))) {
                total.increment();
                byNamespace.computeIfAbsent(namespace, ns -> new LongAdder()).increment();
            }
        }
    }

    /** The shard key config.collections holds for a namespace, or null (not sharded). */
    private static Document shardKey(MongoCollection<?> configCollections, String namespace) {
        if (configCollections == null) {
            return null;
        }
        for (Document entry : configCollections.handleQuery(new Document("_id", namespace))) {
            boolean sharded = !Utils.isTrue(entry.get("dropped")) && !Utils.isTrue(entry.get("unsplittable"));
            return sharded && entry.get("key") instanceof Document key ? key : null;
        }
        return null;
    }

    Document status() {
        Document namespaces = new Document();
        for (Map.Entry<String, LongAdder> entry : byNamespace.entrySet()) {
            namespaces.put(entry.getKey(), entry.getValue().sum());
        }
        return new Document("total", total.sum()).append("byNamespace", namespaces);
    }

    private static List<Document> statements(Object given, String filterField,
                                             java.util.function.Predicate<Document> single) {
        if (!(given instanceof List<?> list)) {
            return List.of();
        }
        return list.stream().filter(Document.class::isInstance).map(Document.class::cast).filter(single)
            .map(statement -> statement.get(filterField) instanceof Document q ? q : new Document()).toList();
    }

    /** Whether {@code filter} requires {@code field} to equal one value a shard key can hold. */
    private static boolean pinned(Document filter, String field) {
        if (filter.containsKey(field) && equality(filter.get(field))) {
            return true;
        }
        return filter.get("$and") instanceof List<?> clauses
            && clauses.stream().anyMatch(c -> c instanceof Document clause && pinned(clause, field));
    }

    private static boolean equality(Object condition) {
        if (condition instanceof Document operators && operators.keySet().stream().anyMatch(k -> k.startsWith("$"))) {
            return operators.size() == 1 && operators.containsKey("$eq") && plainValue(operators.get("$eq"));
        }
        return plainValue(condition);
    }

    private static boolean plainValue(Object value) {
        // an array never is a shard key value, a regular expression matches rather than equals
        return !(value instanceof List) && !(value instanceof BsonRegularExpression) && !(value instanceof Pattern);
    }
}
