import java.time.Instant;
import java.util.Collection;
import java.util.Date;
import java.util.HexFormat;
import java.util.Map;
import java.util.UUID;

import de.bwaldvogel.mongo.bson.BinData;
import de.bwaldvogel.mongo.bson.BsonRegularExpression;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Decimal128;
import de.bwaldvogel.mongo.bson.MaxKey;
import de.bwaldvogel.mongo.bson.MinKey;
import de.bwaldvogel.mongo.bson.ObjectId;

/**
 * A command document as MongoDB prints it in an error message (BSONObj::toString): {@code { find:
 * "items", filter: { qty: 1 }, $db: "app" }}, field names bare, strings quoted, doubles with a
 * decimal point ({@code 1.0}), {@code ObjectId('…')}, {@code new Date(…)}, {@code UUID("…")},
 * {@code BinData(0, HEX)}, {@code Timestamp(s, i)}.
 */
final class CommandText {
    private CommandText() {
    }

    static String of(Object value) {
        StringBuilder text = new StringBuilder();
        append(text, value);
        return text.toString();
    }

    private static void append(StringBuilder text, Object value) {
        if (value instanceof Map<?, ?> document) {
            appendDocument(text, document);
        } else if (value instanceof Collection<?> array) {
            appendArray(text, array);
        } else if (value instanceof String string) {
            text.append('"').append(string.replace("\\", "\\\\").replace("\"", "\\\"")).append('"');
        } else if (value instanceof Double number) {
            text.append(formatDouble(number));
        } else if (value instanceof ObjectId id) {
            text.append("ObjectId('").append(id.getHexData()).append("')");
        } else if (value instanceof Instant instant) {
            text.append("new Date(").append(instant.toEpochMilli()).append(')');
        } else if (value instanceof Date date) {
            text.append("new Date(").append(date.getTime()).append(')');
        } else if (value instanceof UUID uuid) {
            text.append("UUID(\"").append(uuid).append("\")");
        } else if (value instanceof BinData binary) {
            text.append("BinData(0, ").append(HexFormat.of().withUpperCase().formatHex(binary.getData())).append(')');
        } else if (value instanceof BsonTimestamp timestamp) {
            text.append("Timestamp(").append(timestamp.getTime()).append(", ").append(timestamp.getInc()).append(')');
        } else if (value instanceof Decimal128 decimal) {
            text.append("NumberDecimal(\"").append(decimal).append("\")");
        } else if (value instanceof BsonRegularExpression regex) {
            text.append('/').append(regex.getPattern()).append('/').append(regex.getOptions());
        } else if (value instanceof MinKey) {
            text.append("MinKey");
        } else if (value instanceof MaxKey) {
            text.append("MaxKey");
        } else {
            text.append(value); // null, booleans, int32 and int64 print as themselves
        }
    }

    private static void appendDocument(StringBuilder text, Map<?, ?> document) {
        if (document.isEmpty()) {
            text.append("{}");
            return;
        }
        text.append("{ ");
        boolean first = true;
        for (Map.Entry<?, ?> field : document.entrySet()) {
            text.append(first ? "" : ", ").append(field.getKey()).append(": ");
            append(text, field.getValue());
            first = false;
        }
        text.append(" }");
    }

    private static void appendArray(StringBuilder text, Collection<?> array) {
        if (array.isEmpty()) {
            text.append("[]");
            return;
        }
        text.append("[ ");
        boolean first = true;
        for (Object element : array) {
            text.append(first ? "" : ", ");
            append(text, element);
            first = false;
        }
        text.append(" ]");
    }

    private static String formatDouble(double number) {
        if (Double.isNaN(number)) {
            return "nan.0";
        }
        if (Double.isInfinite(number)) {
            return number > 0 ? "inf.0" : "-inf.0";
        }
        if (number == Math.rint(number) && Math.abs(number) < 1e15) {
            return (long) number + ".0";
        }
        return Double.toString(number);
    }
}
