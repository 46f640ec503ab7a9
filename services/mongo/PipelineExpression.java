import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import de.bwaldvogel.mongo.backend.Missing;
import de.bwaldvogel.mongo.backend.aggregation.Expression;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * Aggregation expressions of a pipeline-style update, with the three MongoDB 5.0 operators for
 * field names a path cannot name ({@code $getField}, {@code $setField}, {@code $unsetField}),
 * which mongo-java-server 1.47 lacks, and {@code $literal}, field paths, {@code $$ROOT},
 * {@code $$CURRENT} and {@code $$REMOVE}. Any other operator is the library's, its arguments
 * holding these three evaluated first.
 *
 * <p>Semantics and codes, MongoDB's (src/mongo/db/pipeline/expression.cpp, field_path.cpp; the
 * codes of the 'field' checks as DocumentDB and FerretDB reproduce them, the "dots and dollars"
 * jstests): 'field' is a constant string, 5654600/4161108 when it is a field path,
 * 5654601/4161106 when not constant, 5654602/4161107 when not a string; $getField of a missing
 * or non-document input is missing, of null null; $setField's input must be a document
 * (4161105) or nullish (then null), its value {@code $$REMOVE} (or missing) removes the field;
 * {@code $unsetField} is $setField with {@code $$REMOVE}. In an object expression a field name
 * may not start with {@code $} (16410) nor hold a {@code .} (16412).
 */
final class PipelineExpression {
    private static final Object MISSING = Missing.getInstance();
    private static final String HINT = " Consider using $getField or $setField.";

    private PipelineExpression() {
    }

    static Object evaluate(Object expression, Document root) {
        if (expression instanceof String string) {
            return variableOrPath(string, root);
        }
        if (expression instanceof List<?> list) {
            List<Object> values = new ArrayList<>(list.size());
            for (Object element : list) {
                Object value = evaluate(element, root);
                values.add(value instanceof Missing ? null : value);
            }
            return values;
        }
        if (!(expression instanceof Document document)) {
            return expression;
        }
        if (document.size() == 1 && document.keySet().iterator().next().startsWith("$")) {
            return operator(document, root);
        }
        Document object = new Document();
        for (Map.Entry<String, Object> field : document.entrySet()) {
            checkFieldName(field.getKey());
            Object value = evaluate(field.getValue(), root);
            if (!(value instanceof Missing)) {
                object.put(field.getKey(), value);
            }
        }
        return object;
    }

    /** A field name of an object expression or a stage's path component (FieldPath's checks). */
    static void checkFieldName(String name) {
        if (name.isEmpty()) {
            throw new MongoServerError(15998, "Location15998", "FieldPath field names may not be empty strings.");
        }
        if (name.startsWith("$")) {
            throw new MongoServerError(16410, "Location16410", "FieldPath field names may not start with '$'." + HINT);
        }
        if (name.contains(".")) {
            throw new MongoServerError(16412, "Location16412", "FieldPath field names may not contain '.'." + HINT);
        }
    }

    private static Object variableOrPath(String string, Document root) {
        if (string.equals("$$REMOVE")) {
            return MISSING;
        }
        for (String variable : List.of("$$ROOT", "$$CURRENT")) {
            if (string.equals(variable)) {
                return root;
            }
            if (string.startsWith(variable + ".")) {
                return GuardExpression.path(root, string.substring(variable.length() + 1));
            }
        }
        if (string.startsWith("$$")) {
            return Expression.evaluateDocument(string, root); // other variables: the library's
        }
        return string.startsWith("$") ? GuardExpression.path(root, string.substring(1)) : string;
    }

    private static Object operator(Document document, Document root) {
        Map.Entry<String, Object> only = document.entrySet().iterator().next();
        switch (only.getKey()) {
            case "$literal":
                return copy(only.getValue());
            case "$getField":
                return getField(only.getValue(), root);
            case "$setField":
                return setField("$setField", only.getValue(), root);
            case "$unsetField":
                return setField("$unsetField", only.getValue(), root);
            default:
                return Expression.evaluateDocument(withFieldOperatorsEvaluated(document, root), root);
        }
    }

    /** The expression with every $getField/$setField/$unsetField in it replaced by its value. */
    private static Object withFieldOperatorsEvaluated(Object expression, Document root) {
        if (expression instanceof List<?> list) {
            List<Object> copied = new ArrayList<>(list.size());
            for (Object element : list) {
                copied.add(withFieldOperatorsEvaluated(element, root));
            }
            return copied;
        }
        if (!(expression instanceof Document document)) {
            return expression;
        }
        if (document.size() == 1) {
            String key = document.keySet().iterator().next();
            if (key.equals("$literal")) {
                return document;
            }
            if (key.equals("$getField") || key.equals("$setField") || key.equals("$unsetField")) {
                Object value = operator(document, root);
                return value instanceof Missing ? "$$REMOVE" : new Document("$literal", value);
            }
        }
        Document copied = new Document();
        for (Map.Entry<String, Object> field : document.entrySet()) {
            copied.put(field.getKey(), withFieldOperatorsEvaluated(field.getValue(), root));
        }
        return copied;
    }

    private static Object getField(Object argument, Document root) {
        Object field = argument;
        Object input = root;
        if (argument instanceof Document arguments && !isLiteral(arguments)) {
            for (String name : arguments.keySet()) {
                if (!name.equals("field") && !name.equals("input")) {
                    throw new MongoServerError(3041701, "Location3041701", "$getField found an unknown argument: " + name);
                }
            }
            if (!arguments.containsKey("field")) {
                throw new MongoServerError(3041702, "Location3041702", "$getField requires 'field' to be specified");
            }
            field = arguments.get("field");
            input = arguments.containsKey("input") ? evaluate(arguments.get("input"), root) : root;
        }
        String name = constantField("$getField", field, new int[] {5654600, 5654601, 5654602});
        if (input == null) {
            return null;
        }
        if (!(input instanceof Document document)) {
            return MISSING;
        }
        return document.containsKey(name) ? document.get(name) : MISSING;
    }

    private static Object setField(String operator, Object argument, Document root) {
        if (!(argument instanceof Document arguments)) {
            throw new MongoServerError(4161100, "Location4161100", operator + " only supports an object as its argument");
        }
        boolean unset = operator.equals("$unsetField");
        for (String name : arguments.keySet()) {
            if (!name.equals("field") && !name.equals("input") && (unset || !name.equals("value"))) {
                throw new MongoServerError(4161101, "Location4161101", operator + " found an unknown argument: " + name);
            }
        }
        if (!arguments.containsKey("field")) {
            throw new MongoServerError(4161102, "Location4161102", operator + " requires 'field' to be specified");
        }
        if (!unset && !arguments.containsKey("value")) {
            throw new MongoServerError(4161103, "Location4161103", "$setField requires 'value' to be specified");
        }
        if (!arguments.containsKey("input")) {
            throw new MongoServerError(4161109, "Location4161109", operator + " requires 'input' to be specified");
        }
        String name = constantField(operator, arguments.get("field"), new int[] {4161108, 4161106, 4161107});
        Object input = evaluate(arguments.get("input"), root);
        if (input == null || input instanceof Missing) {
            return null;
        }
        if (!(input instanceof Document document)) {
            throw new MongoServerError(4161105, "Location4161105", "$setField requires 'input' to evaluate to type Object");
        }
        Object value = unset ? MISSING : evaluate(arguments.get("value"), root);
        Document output = new Document(document);
        if (value instanceof Missing) {
            output.remove(name);
        } else {
            output.put(name, value);
        }
        return output;
    }

    /** The name a 'field' argument gives, which must be a constant string; codes: path, non-constant, non-string. */
    private static String constantField(String operator, Object field, int[] codes) {
        Object constant = field;
        if (field instanceof Document document) {
            if (!isLiteral(document)) {
                throw new MongoServerError(codes[1], "Location" + codes[1],
                    operator + " requires 'field' to evaluate to a constant, but got a non-constant argument");
            }
            constant = document.get("$literal");
        } else if (field instanceof String string && string.startsWith("$")) {
            String reference = string.startsWith("$$") ? string.substring(1) : "$CURRENT." + string.substring(1);
            throw new MongoServerError(codes[0], "Location" + codes[0], "'" + reference
                + "' is a field path reference which is not allowed in this context. Did you mean {$literal: '"
                + reference + "'}?");
        }
        if (!(constant instanceof String name)) {
            throw new MongoServerError(codes[2], "Location" + codes[2], operator
                + " requires 'field' to evaluate to type String, but got " + GuardExpression.typeName(constant));
        }
        return name;
    }

    private static boolean isLiteral(Document document) {
        return document.size() == 1 && document.containsKey("$literal");
    }

    private static Object copy(Object value) {
        return value instanceof Document || value instanceof List
            ? new Document("v", value).cloneDeeply().get("v") : value;
    }
}
