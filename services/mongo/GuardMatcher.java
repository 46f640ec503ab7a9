import java.lang.reflect.Field;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import de.bwaldvogel.mongo.backend.AbstractMongoCollection;
import de.bwaldvogel.mongo.backend.QueryMatcher;
import de.bwaldvogel.mongo.bson.Document;

/**
 * The library's query matching, except for the {@code $expr} conditions that
 * {@link GuardExpression} evaluates (at the top level of a query or in a top-level {@code $and}):
 * those are decided MongoDB's way, the rest of the query by the library.
 *
 * <p>A collection's matcher is a private field of the library's collections, used for finding
 * documents and again by updates and findAndModify (for the positional operator), so it is
 * replaced in place ({@link #install}).
 */
final class GuardMatcher implements QueryMatcher {
    private final QueryMatcher library;

    private GuardMatcher(QueryMatcher library) {
        this.library = library;
    }

    /** Puts a GuardMatcher in front of the collection's own matcher; returns it. */
    static QueryMatcher install(AbstractMongoCollection<?> collection) {
        try {
            Field field = AbstractMongoCollection.class.getDeclaredField("matcher");
            field.setAccessible(true);
            GuardMatcher matcher = new GuardMatcher((QueryMatcher) field.get(collection));
            field.set(collection, matcher);
            return matcher;
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("mongo-java-server changed: no matcher field to wrap", e);
        }
    }

    @Override
    public boolean matches(Document document, Document query) {
        Document rest = withoutGuardExpressions(document, query);
        return rest != null && (rest.isEmpty() || library.matches(document, rest));
    }

    @Override
    public Integer matchPosition(Document document, Document query) {
        Document rest = withoutGuardExpressions(document, query);
        return rest == null ? null : library.matchPosition(document, rest);
    }

    @Override
    public boolean matchesValue(Object queryValue, Object value) {
        return library.matchesValue(queryValue, value);
    }

    /**
     * The query without the conditions this class decides, or null when one of them is false
     * for {@code document}. A query without any is returned as it is.
     */
    private Document withoutGuardExpressions(Document document, Document query) {
        if (!query.containsKey("$expr") && !query.containsKey("$and")) {
            return query;
        }
        Document rest = new Document();
        for (Map.Entry<String, Object> condition : query.entrySet()) {
            String key = condition.getKey();
            Object value = condition.getValue();
            if (key.equals("$expr") && GuardExpression.supports(value)) {
                if (!GuardExpression.isTrue(GuardExpression.evaluate(value, document))) {
                    return null;
                }
            } else if (key.equals("$and") && value instanceof List<?> clauses && !clauses.isEmpty()
                && clauses.stream().allMatch(Document.class::isInstance)) {
                List<Document> rests = new ArrayList<>();
                for (Object clause : clauses) {
                    Document clauseRest = withoutGuardExpressions(document, (Document) clause);
                    if (clauseRest == null) {
                        return null;
                    }
                    if (!clauseRest.isEmpty()) {
                        rests.add(clauseRest);
                    }
                }
                if (!rests.isEmpty()) {
                    rest.put(key, rests);
                }
            } else {
                rest.put(key, value);
            }
        }
        return rest;
    }
}
