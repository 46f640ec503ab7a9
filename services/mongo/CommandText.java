import java.time.Instant;
import java.util.Collection;
import java.util.Map;
import java.util.UUID;

import de.bwaldvogel.mongo.bson.BinData;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.bson.ObjectId;

/**
 * A command document as MongoDB writes it into error messages (BSONObj::toString): {@code { find:
 * "oplog.rs", limit: 1, $db: "local" }}, field names bare, strings double-quoted, ObjectId('…'),
 * Timestamp(s, i), UUID("…"). Used where MongoDB's message quotes the command.
 */
final class CommandText {
    private CommandText() {
    }

    static String of(Document command) {
        StringBuilder out = new StringBuilder();
        append(out, command);
        return out.toString();
    }

    private static void append(StringBuilder out, Object value) {
        if (value instanceof Map<?, ?> document) {
            if (document.isEmpty()) {
                out.append("{}");
                return;
            }
            out.append("{ ");
            boolean first = true;
            for (Map.Entry<?, ?> entry : document.entrySet()) {
                out.append(first ? "" : ", ").append(entry.getKey()).append(": ");
                append(out, entry.getValue());
                first = false;
            }
            out.append(" }");
        } else if (value instanceof Collection<?> list) {
            out.append(list.isEmpty() ? "[]" : "[ ");
            boolean first = true;
            for (Object element : list) {
                out.append(first ? "" : ", ");
                append(out, element);
                first = false;
            }
            out.append(list.isEmpty() ? "" : " ]");
        } else if (value instanceof String text) {
            out.append('"').append(text.replace("\\", "\\\\").replace("\"", "\\\"")).append('"');
        } else if (value instanceof ObjectId id) {
            out.append("ObjectId('").append(id.getHexData()).append("')");
        } else if (value instanceof BsonTimestamp ts) {
            out.append("Timestamp(").append(ts.getValue() >>> 32).append(", ").append(ts.getValue() & 0xFFFFFFFFL)
                .append(')');
        } else if (value instanceof UUID uuid) {
            out.append("UUID(\"").append(uuid).append("\")");
        } else if (value instanceof Instant instant) {
            out.append("new Date(").append(instant.toEpochMilli()).append(')');
        } else if (value instanceof BinData) {
            out.append("BinData(…)");
        } else {
            out.append(value);
        }
    }
}
