import java.util.AbstractMap;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.function.IntFunction;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * {@code $changeStreamSplitLargeEvent} (MongoDB 7.0, 6.0.9): as the last stage of a change
 * stream, an event too large to return is returned as fragments, each with its own resume token
 * and {@code splitEvent: {fragment: n, of: m}}.
 *
 * <p>From MongoDB's source: the stage's checks (document_source_change_stream_split_large_event.cpp:
 * 7182800 for a non-empty spec, 7182802 when it is not last; a server without the stage answers
 * 40324 "Unrecognized pipeline stage name"), the size an event may have before it is split
 * (kBSONObjMaxChangeEventSize, 16 MiB + 8 KiB, less the resume token's size) and the split
 * itself (change_stream_split_event_helpers.cpp): every field but {@code _id}, ordered by BSON
 * size then name, fills the fragments greedily; a single field too large fails with 7182500.
 * A stream resumed from a fragment's token needs the stage (280 ChangeStreamFatalError).
 */
final class SplitLargeEvent {
    static final String STAGE = "$changeStreamSplitLargeEvent";
    /** kBSONObjMaxChangeEventSize: BSONObjMaxInternalSize less 8 KiB. */
    static final int MAX_CHANGE_EVENT_SIZE = 16 * 1024 * 1024 + 16 * 1024 - 8 * 1024;

    private SplitLargeEvent() {
    }

    /**
     * The change stream pipeline without the split stage, after MongoDB's checks of it; null
     * when the pipeline has none (then nothing is split).
     */
    static List<Object> withoutStage(List<?> pipeline, ReportedVersion version) {
        int at = -1;
        for (int i = 0; i < pipeline.size(); i++) {
            if (pipeline.get(i) instanceof Document stage && stage.containsKey(STAGE)) {
                if (!(version.atLeast(7, 0, 0) || (version.atLeast(6, 0, 9) && !version.atLeast(6, 1, 0)))) {
                    throw new MongoServerError(40324, "Location40324", "Unrecognized pipeline stage name: '" + STAGE + "'");
                }
                if (!(stage.get(STAGE) instanceof Document spec) || !spec.isEmpty()) {
                    throw new MongoServerError(7182800, "Location7182800", STAGE + " spec should be an empty object");
                }
                if (i != pipeline.size() - 1) {
                    throw new MongoServerError(7182802, "Location7182802", STAGE + " must be the last stage in the pipeline");
                }
                at = i;
            }
        }
        if (at < 0) {
            return null;
        }
        List<Object> rest = new ArrayList<>(pipeline);
        rest.remove(at);
        return rest;
    }

    static MongoServerError resumeNeedsStage() {
        return new MongoServerError(280, "ChangeStreamFatalError",
            "To resume from a split event, the $changeStream pipeline must include a " + STAGE + " stage");
    }

    static MongoServerError differentSplit() {
        return new MongoServerError(280, "ChangeStreamFatalError", "Attempted to resume from a split event, but the "
            + "resumed stream produced a different split. Ensure that the pipeline used to resume is the same as the "
            + "original");
    }

    /**
     * The fragments of {@code event} (its fields but _id), each at most {@code maxFragmentSize}
     * BSON bytes; {@code tokenOf} gives fragment i (from 0) its resume token.
     */
    static List<Document> split(Document event, int maxFragmentSize, IntFunction<Document> tokenOf) {
        List<Map.Entry<Integer, Map.Entry<String, Object>>> fields = new ArrayList<>();
        for (Map.Entry<String, Object> field : event.entrySet()) {
            if (!field.getKey().equals("_id")) {
                fields.add(new AbstractMap.SimpleEntry<>(elementSize(field.getKey(), field.getValue()), field));
            }
        }
        if (fields.isEmpty()) {
            throw new MongoServerError(7182502, "Location7182502",
                "Cannot split an empty event or an event containing solely '_id' field");
        }
        fields.sort(Comparator.<Map.Entry<Integer, Map.Entry<String, Object>>>comparingInt(Map.Entry::getKey)
            .thenComparing(f -> f.getValue().getKey()));
        List<Document> fragments = new ArrayList<>();
        int next = 0;
        while (next < fields.size()) {
            Document fragment = new Document("_id", tokenOf.apply(fragments.size()))
                .append("splitEvent", new Document("fragment", fragments.size() + 1).append("of", 0));
            int size = ChangeStreamOplog.bsonSize(fragment);
            do {
                Map.Entry<Integer, Map.Entry<String, Object>> field = fields.get(next++);
                fragment.put(field.getValue().getKey(), field.getValue().getValue());
                size += field.getKey();
            } while (next < fields.size() && size + fields.get(next).getKey() <= maxFragmentSize);
            if (size > maxFragmentSize) {
                throw new MongoServerError(7182500, "Location7182500", "Splitting change event failed: fragment size "
                    + size + " is greater than maximum allowed fragment size " + maxFragmentSize);
            }
            fragments.add(fragment);
        }
        for (Document fragment : fragments) {
            ((Document) fragment.get("splitEvent")).put("of", fragments.size());
        }
        return fragments;
    }

    /** A field's size inside a BSON document: type byte, name, value. */
    private static int elementSize(String name, Object value) {
        return ChangeStreamOplog.bsonSize(new Document(name, value)) - 5;
    }
}
