import java.util.List;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * This server compares strings binary only. A collation option is accepted when it asks for just
 * that ({@code {locale: "simple"}}); any other collation, on an operation, a collection or an
 * index, is refused instead of being ignored, so no test can believe it ran under one.
 */
final class Collations {
    private Collations() {
    }

    static void check(String command, Document query) {
        String name = command.toLowerCase();
        switch (name) {
            case "find", "aggregate", "count", "distinct", "findandmodify", "create" -> check(query.get("collation"));
            case "update" -> checkEach(query.get("updates"));
            case "delete" -> checkEach(query.get("deletes"));
            case "createindexes" -> checkEach(query.get("indexes"));
            default -> {
            }
        }
    }

    private static void checkEach(Object statements) {
        if (statements instanceof List<?> list) {
            for (Object statement : list) {
                if (statement instanceof Document document) {
                    check(document.get("collation"));
                }
            }
        }
    }

    private static void check(Object collation) {
        if (collation == null) {
            return;
        }
        if (!(collation instanceof Document document)) {
            throw new MongoServerError(14, "TypeMismatch", "collation must be an object, not " + collation);
        }
        if (!document.containsKey("locale")) {
            throw new MongoServerError(40414, "Location40414", "BSON field 'locale' is missing but a required field");
        }
        if (!"simple".equals(document.get("locale")) || document.size() > 1) {
            throw new MongoServerError(2, "BadValue", "this test server has no collations: only {locale: \"simple\"} "
                + "(binary comparison) is accepted, not " + document);
        }
    }
}
