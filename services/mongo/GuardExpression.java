import java.math.BigDecimal;
import java.math.MathContext;
import java.math.RoundingMode;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Set;

import de.bwaldvogel.mongo.backend.Missing;
import de.bwaldvogel.mongo.bson.BinData;
import de.bwaldvogel.mongo.bson.BsonJavaScript;
import de.bwaldvogel.mongo.bson.BsonRegularExpression;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Decimal128;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.bson.LegacyUUID;
import de.bwaldvogel.mongo.bson.MaxKey;
import de.bwaldvogel.mongo.bson.MinKey;
import de.bwaldvogel.mongo.bson.ObjectId;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * MongoDB's semantics for the aggregation expressions a guarded write puts in {@code $expr}.
 *
 * <p>mongo-java-server 1.47 has no {@code $getField} and no {@code $type}, treats a missing
 * field as equal to null, and cannot compare regular expressions. This evaluates the subset the
 * guards use, as MongoDB does: {@code $and}, {@code $or}, {@code $not}, {@code $eq},
 * {@code $ne}, {@code $type}, {@code $getField}, {@code $literal}, field paths, {@code $$ROOT}
 * and {@code $$CURRENT}, and constants. An expression with anything else is left to the library
 * ({@link #supports}). Equality is MongoDB's: numbers by value across int, long, double and
 * decimal (a double rounded to 34 digits against a decimal; NaN equals NaN), a missing value
 * only equals a missing one, documents field by field in order, regular expressions by pattern
 * and options, everything else by type and value.
 */
final class GuardExpression {
    private GuardExpression() {
    }

    private static final Object MISSING = Missing.getInstance();
    private static final Set<String> OPERATORS =
        Set.of("$and", "$or", "$not", "$eq", "$ne", "$type", "$getField", "$literal");
    private static final MathContext DECIMAL_DIGITS = new MathContext(34, RoundingMode.HALF_EVEN);

    /** Whether {@code expression} uses only what this class evaluates. */
    static boolean supports(Object expression) {
        if (expression instanceof String path) {
            return !path.startsWith("$$") || path.equals("$$ROOT") || path.equals("$$CURRENT");
        }
        if (expression instanceof List<?> list) {
            return list.stream().allMatch(GuardExpression::supports);
        }
        if (expression instanceof Document document) {
            if (document.size() != 1) {
                return false; // an object expression: not used by guards
            }
            Map.Entry<String, Object> only = document.entrySet().iterator().next();
            String operator = only.getKey();
            if (operator.equals("$literal")) {
                return true;
            }
            if (!OPERATORS.contains(operator)) {
                return false;
            }
            if (operator.equals("$getField") && only.getValue() instanceof Document arguments) {
                return arguments.keySet().stream().allMatch(k -> k.equals("field") || k.equals("input"))
                    && arguments.values().stream().allMatch(GuardExpression::supports);
            }
            return supports(only.getValue());
        }
        return true;
    }

    /** MongoDB's truth of a value in a boolean context. */
    static boolean isTrue(Object value) {
        if (value == null || value instanceof Missing) {
            return false;
        }
        if (value instanceof Boolean bool) {
            return bool;
        }
        if (value instanceof Number number) {
            BigDecimal exact = exact(number);
            return exact == null || exact.signum() != 0; // NaN and the infinities are true
        }
        return true;
    }

    static Object evaluate(Object expression, Document root) {
        if (expression instanceof String string) {
            if (string.equals("$$ROOT") || string.equals("$$CURRENT")) {
                return root;
            }
            return string.startsWith("$") ? path(root, string.substring(1)) : string;
        }
        if (expression instanceof List<?> list) {
            List<Object> values = new ArrayList<>(list.size());
            for (Object element : list) {
                values.add(evaluate(element, root));
            }
            return values;
        }
        if (!(expression instanceof Document document) || document.size() != 1) {
            return expression;
        }
        Map.Entry<String, Object> only = document.entrySet().iterator().next();
        Object argument = only.getValue();
        switch (only.getKey()) {
            case "$literal":
                return argument;
            case "$and":
                for (Object clause : arguments(argument)) {
                    if (!isTrue(evaluate(clause, root))) {
                        return false;
                    }
                }
                return true;
            case "$or":
                for (Object clause : arguments(argument)) {
                    if (isTrue(evaluate(clause, root))) {
                        return true;
                    }
                }
                return false;
            case "$not":
                return !isTrue(evaluate(single("$not", argument), root));
            case "$eq":
            case "$ne": {
                List<?> pair = arguments(argument);
                if (pair.size() != 2) {
                    throw new MongoServerError(16020, "Expression " + only.getKey()
                        + " takes exactly 2 arguments. " + pair.size() + " were passed in.");
                }
                boolean equal = same(evaluate(pair.get(0), root), evaluate(pair.get(1), root));
                return only.getKey().equals("$eq") == equal;
            }
            case "$type":
                return typeName(evaluate(single("$type", argument), root));
            case "$getField":
                return getField(argument, root);
            default:
                return expression;
        }
    }

    private static Object getField(Object argument, Document root) {
        Object field;
        Object input;
        if (argument instanceof Document arguments) {
            if (!arguments.containsKey("field")) {
                throw new MongoServerError(3041702, "$getField requires 'field' to be specified");
            }
            field = evaluate(arguments.get("field"), root);
            input = arguments.containsKey("input") ? evaluate(arguments.get("input"), root) : root;
        } else {
            field = evaluate(argument, root);
            input = root;
        }
        if (!(field instanceof String name)) {
            throw new MongoServerError(3041704, "$getField requires 'field' to evaluate to type String");
        }
        if (input == null || input instanceof Missing) {
            return null;
        }
        if (!(input instanceof Document document)) {
            throw new MongoServerError(3041705, "$getField requires 'input' to evaluate to type Object");
        }
        return document.containsKey(name) ? document.get(name) : MISSING;
    }

    /** A field path ("a.b") of an aggregation expression, through arrays as MongoDB walks them. */
    static Object path(Object value, String path) {
        int dot = path.indexOf('.');
        String head = dot < 0 ? path : path.substring(0, dot);
        String rest = dot < 0 ? null : path.substring(dot + 1);
        if (value instanceof Document document) {
            if (!document.containsKey(head)) {
                return MISSING;
            }
            Object child = document.get(head);
            return rest == null ? child : path(child, rest);
        }
        if (value instanceof List<?> list) {
            List<Object> values = new ArrayList<>();
            for (Object element : list) {
                if (element instanceof Document || element instanceof List) {
                    Object found = path(element, path);
                    if (!(found instanceof Missing)) {
                        values.add(found);
                    }
                }
            }
            return values;
        }
        return MISSING;
    }

    private static List<?> arguments(Object argument) {
        return argument instanceof List<?> list ? list : List.of(argument);
    }

    private static Object single(String operator, Object argument) {
        List<?> list = arguments(argument);
        if (list.size() != 1) {
            throw new MongoServerError(16020, "Expression " + operator + " takes exactly 1 arguments. "
                + list.size() + " were passed in.");
        }
        return list.get(0);
    }

    /** The $type name of a value. */
    static String typeName(Object value) {
        if (value instanceof Missing) {
            return "missing";
        } else if (value == null) {
            return "null";
        } else if (value instanceof Boolean) {
            return "bool";
        } else if (value instanceof Integer) {
            return "int";
        } else if (value instanceof Long) {
            return "long";
        } else if (value instanceof Double) {
            return "double";
        } else if (value instanceof Decimal128) {
            return "decimal";
        } else if (value instanceof String) {
            return "string";
        } else if (value instanceof Document) {
            return "object";
        } else if (value instanceof List) {
            return "array";
        } else if (value instanceof BinData || value instanceof java.util.UUID || value instanceof LegacyUUID) {
            return "binData";
        } else if (value instanceof ObjectId) {
            return "objectId";
        } else if (value instanceof java.time.Instant) {
            return "date";
        } else if (value instanceof BsonTimestamp) {
            return "timestamp";
        } else if (value instanceof BsonRegularExpression) {
            return "regex";
        } else if (value instanceof BsonJavaScript) {
            return "javascript";
        } else if (value instanceof MinKey) {
            return "minKey";
        } else if (value instanceof MaxKey) {
            return "maxKey";
        }
        throw new MongoServerError(2, "BadValue", "no BSON type for " + value.getClass().getSimpleName());
    }

    /** MongoDB's equality of two values (the simple collation). */
    static boolean same(Object a, Object b) {
        if (a instanceof Number x && b instanceof Number y) {
            return sameNumber(x, y);
        }
        if (a instanceof Missing || b instanceof Missing || a == null || b == null) {
            return (a instanceof Missing && b instanceof Missing) || (a == null && b == null);
        }
        if (a instanceof Document x && b instanceof Document y) {
            if (x.size() != y.size()) {
                return false;
            }
            Iterator<Map.Entry<String, Object>> left = x.entrySet().iterator();
            Iterator<Map.Entry<String, Object>> right = y.entrySet().iterator();
            while (left.hasNext()) {
                Map.Entry<String, Object> l = left.next();
                Map.Entry<String, Object> r = right.next();
                if (!l.getKey().equals(r.getKey()) || !same(l.getValue(), r.getValue())) {
                    return false;
                }
            }
            return true;
        }
        if (a instanceof List<?> x && b instanceof List<?> y) {
            if (x.size() != y.size()) {
                return false;
            }
            for (int i = 0; i < x.size(); i++) {
                if (!same(x.get(i), y.get(i))) {
                    return false;
                }
            }
            return true;
        }
        if (a instanceof BsonRegularExpression x && b instanceof BsonRegularExpression y) {
            return x.getPattern().equals(y.getPattern()) && x.getOptions().equals(y.getOptions());
        }
        if (a instanceof BsonJavaScript x && b instanceof BsonJavaScript y) {
            return x.getCode().equals(y.getCode());
        }
        if (a instanceof MinKey || a instanceof MaxKey) {
            return a.getClass() == b.getClass();
        }
        return a.getClass() == b.getClass() && a.equals(b);
    }

    private static boolean sameNumber(Number a, Number b) {
        if (isNaN(a) || isNaN(b)) {
            return isNaN(a) && isNaN(b);
        }
        BigDecimal x = exact(a);
        BigDecimal y = exact(b);
        if (x == null || y == null) { // an infinity
            return x == null && y == null && Math.signum(a.doubleValue()) == Math.signum(b.doubleValue());
        }
        if (a instanceof Decimal128 != b instanceof Decimal128) {
            // MongoDB compares a double with a decimal by rounding the double to 34 digits.
            if (a instanceof Double) {
                x = x.round(DECIMAL_DIGITS);
            } else if (b instanceof Double) {
                y = y.round(DECIMAL_DIGITS);
            }
        }
        return x.compareTo(y) == 0;
    }

    private static boolean isNaN(Number number) {
        return (number instanceof Double d && d.isNaN())
            || (number instanceof Decimal128 && exact(number) == null && Double.isNaN(number.doubleValue()));
    }

    /** The exact value of a number, or null for NaN and the infinities. */
    private static BigDecimal exact(Number number) {
        if (number instanceof Decimal128 decimal) {
            try {
                return decimal.toBigDecimal();
            } catch (RuntimeException special) { // NaN or an infinity
                return null;
            }
        }
        if (number instanceof Double || number instanceof Float) {
            double value = number.doubleValue();
            return Double.isNaN(value) || Double.isInfinite(value) ? null : new BigDecimal(value);
        }
        return BigDecimal.valueOf(number.longValue());
    }
}
