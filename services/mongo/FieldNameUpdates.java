import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.util.HashMap;
import java.util.Map;

import de.bwaldvogel.mongo.backend.AbstractMongoCollection;
import de.bwaldvogel.mongo.backend.ArrayFilters;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;
import de.bwaldvogel.mongo.exception.MongoServerException;

/**
 * Operator and replacement updates of documents whose top-level field names contain a {@code .}
 * or start with {@code $}, as MongoDB 5.0+ applies them; the library refuses any update of such a
 * document (it validates every top-level name of the result, and stores no dotted name).
 *
 * <p>MongoDB's rules (src/mongo/db/update/storage_validation.cpp; jstests/core/field_name_validation.js):
 * an operator update leaves such fields as they are and validates only what it changes: creating
 * or setting a top-level {@code $} field fails with 52 DollarPrefixedFieldName, "The dollar ($)
 * prefixed field '$x' in '$x' is not allowed in the context of an update's replacement
 * document. Consider using an aggregation pipeline with $replaceWith."; changing a field inside
 * one ({@code $x.y}) and {@code $unset} of one are allowed. Operator paths are paths: {@code
 * a.b} is the field b of a, never the field named "a.b". A replacement may hold dotted names and
 * nested {@code $} names, not a top-level {@code $} name (52). An upsert that inserts is checked
 * as an insert: top-level {@code $} names allowed.
 *
 * <p>The operators themselves are the library's (its private calculateUpdateDocument, by
 * reflection): the document is handed to it with such names renamed to placeholders, the
 * operator paths that address them renamed alike, and the names restored afterwards.
 */
final class FieldNameUpdates {
    private static final Method CALCULATE = method("calculateUpdateDocument", Document.class, Document.class,
        ArrayFilters.class, Integer.class, boolean.class);

    private FieldNameUpdates() {
    }

    /** A top-level name a query or an update operator would read as a path or an operator. */
    static boolean odd(String name) {
        return !name.equals("_id") && (name.startsWith("$") || name.contains("."));
    }

    static boolean hasOddNames(Document document) {
        for (String name : document.keySet()) {
            if (odd(name)) {
                return true;
            }
        }
        return false;
    }

    /** An operator update naming a top-level {@code $} field (allowed when an upsert inserts). */
    static boolean namesDollarField(Document update) {
        for (Object spec : update.values()) {
            if (spec instanceof Document paths) {
                for (Map.Entry<String, Object> path : paths.entrySet()) {
                    if (dollarFirst(path.getKey()) || path.getValue() instanceof String target && dollarFirst(target)) {
                        return true;
                    }
                }
            }
        }
        return false;
    }

    private static boolean dollarFirst(String path) {
        return path.startsWith("$") && !path.equals("$") && !path.startsWith("$[") && !path.startsWith("$.");
    }

    /** A replacement document (not operators) holding such a name. */
    static boolean oddReplacement(Document update) {
        return !update.isEmpty() && !update.keySet().iterator().next().startsWith("$") && hasOddNames(update);
    }

    /** {@code document} after the operator or replacement {@code update}; {@code document} is not changed. */
    static Document apply(AbstractMongoCollection<?> collection, Document document, Document update,
                          ArrayFilters arrayFilters, Integer matchPos, boolean inserting) {
        if (!update.isEmpty() && !update.keySet().iterator().next().startsWith("$")) {
            return replace(document, update);
        }
        Placeholders names = new Placeholders(document);
        Document rewritten = names.rewrite(update, inserting);
        return names.restore(calculate(collection, names.hide(document), rewritten, arrayFilters, matchPos, inserting));
    }

    private static Document replace(Document document, Document replacement) {
        for (String name : replacement.keySet()) {
            if (name.startsWith("$")) {
                throw dollarPrefixed(name);
            }
        }
        Object id = document.get("_id");
        if (replacement.containsKey("_id") && id != null
            && !GuardExpression.same(id, replacement.get("_id"))) {
            throw new MongoServerError(66, "ImmutableField",
                "After applying the update, the (immutable) field '_id' was found to have been altered to _id: "
                    + replacement.get("_id"));
        }
        Document replaced = new Document();
        if (id != null) {
            replaced.put("_id", id);
        }
        for (Map.Entry<String, Object> field : replacement.entrySet()) {
            if (!field.getKey().equals("_id")) {
                replaced.put(field.getKey(), field.getValue());
            }
        }
        return replaced;
    }

    static MongoServerError dollarPrefixed(String name) {
        return new MongoServerError(52, "DollarPrefixedFieldName", "The dollar ($) prefixed field '" + name + "' in '"
            + name + "' is not allowed in the context of an update's replacement document. Consider using an "
            + "aggregation pipeline with $replaceWith.");
    }

    private static Document calculate(AbstractMongoCollection<?> collection, Document document, Document update,
                                      ArrayFilters arrayFilters, Integer matchPos, boolean inserting) {
        try {
            return (Document) CALCULATE.invoke(collection, document, update, arrayFilters, matchPos, inserting);
        } catch (InvocationTargetException e) {
            if (e.getCause() instanceof MongoServerException error) {
                throw error;
            }
            throw new IllegalStateException(e.getCause());
        } catch (IllegalAccessException e) {
            throw new IllegalStateException(e);
        }
    }

    static Method method(String name, Class<?>... parameters) {
        try {
            Method method = AbstractMongoCollection.class.getDeclaredMethod(name, parameters);
            method.setAccessible(true);
            return method;
        } catch (NoSuchMethodException e) {
            throw new IllegalStateException("mongo-java-server changed: no " + name + " to call", e);
        }
    }

    /** The document's odd names, each with a plain stand-in the library accepts. */
    private static final class Placeholders {
        private final Document document;
        private final Map<String, String> byName = new HashMap<>();
        private final Map<String, String> byPlaceholder = new HashMap<>();
        private final String absent;
        private int next;

        Placeholders(Document document) {
            this.document = document;
            for (String name : document.keySet()) {
                if (odd(name)) {
                    String placeholder = fresh();
                    byName.put(name, placeholder);
                    byPlaceholder.put(placeholder, name);
                }
            }
            absent = fresh();
        }

        /** A name no stored document uses: a control character no application writes. */
        private String fresh() {
            String name;
            do {
                name = "\u0001field" + next++;
            } while (document.containsKey(name));
            return name;
        }

        Document hide(Document original) {
            Document hidden = new Document();
            for (Map.Entry<String, Object> field : original.entrySet()) {
                hidden.put(byName.getOrDefault(field.getKey(), field.getKey()), field.getValue());
            }
            return hidden;
        }

        Document restore(Document result) {
            Document restored = new Document();
            for (Map.Entry<String, Object> field : result.entrySet()) {
                restored.put(byPlaceholder.getOrDefault(field.getKey(), field.getKey()), field.getValue());
            }
            return restored;
        }

        /** The update with paths into odd top-level fields renamed; refuses what MongoDB refuses. */
        Document rewrite(Document update, boolean inserting) {
            Document rewritten = new Document();
            for (Map.Entry<String, Object> operator : update.entrySet()) {
                if (!(operator.getValue() instanceof Document spec)) {
                    rewritten.put(operator.getKey(), operator.getValue()); // the library reports it
                    continue;
                }
                // $setOnInsert changes nothing of a document that exists: nothing to refuse
                boolean removes = operator.getKey().equals("$unset") || operator.getKey().equals("$setOnInsert");
                boolean renames = operator.getKey().equals("$rename");
                Document paths = new Document();
                for (Map.Entry<String, Object> entry : spec.entrySet()) {
                    Object value = entry.getValue();
                    if (renames && value instanceof String target) {
                        value = path(target, false, inserting);
                    }
                    paths.put(path(entry.getKey(), removes || renames, inserting), value);
                }
                rewritten.put(operator.getKey(), paths);
            }
            return rewritten;
        }

        private String path(String path, boolean removes, boolean inserting) {
            int dot = path.indexOf('.');
            String first = dot < 0 ? path : path.substring(0, dot);
            String rest = dot < 0 ? "" : path.substring(dot);
            if (!first.startsWith("$") || first.equals("$") || first.startsWith("$[")) {
                return path; // a plain path, or a positional one the library refuses as MongoDB does
            }
            String placeholder = byName.get(first);
            if (inserting) {
                if (placeholder == null) {
                    placeholder = fresh();
                    byName.put(first, placeholder);
                    byPlaceholder.put(placeholder, first);
                }
                return placeholder + rest;
            }
            if (rest.isEmpty() && !removes) {
                throw dollarPrefixed(first); // sets a top-level $ field as a whole
            }
            if (placeholder == null) {
                if (removes) {
                    return absent + rest; // nothing to remove
                }
                throw dollarPrefixed(first); // would create a top-level $ field
            }
            return placeholder + rest;
        }
    }
}
