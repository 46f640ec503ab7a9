import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.stream.Stream;

import de.bwaldvogel.mongo.backend.Missing;
import de.bwaldvogel.mongo.backend.aggregation.stage.ProjectStage;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * Pipeline-style updates (an array of stages as the update, MongoDB 4.2+), which
 * mongo-java-server 1.47 fails with a ClassCastException: {@code $set}/{@code $addFields},
 * {@code $unset}, {@code $project}, {@code $replaceWith}/{@code $replaceRoot}, with the
 * expressions of {@link PipelineExpression}. The result may hold top-level names with a
 * {@code .} or a {@code $} (MongoDB allows them from a pipeline, ObjectReplaceExecutor with
 * allowTopLevelDollarPrefixedFields); {@code _id} may not change (66) and comes first.
 *
 * <p>The library's update command casts each statement's {@code u} to a document, so a
 * pipeline travels to the collection wrapped as {@code {$__localMongoPipeline: [stages]}}
 * ({@link #wrapStatements}); the collection checks ({@link #validate}) and runs it ({@link #apply}).
 */
final class UpdatePipeline {
    static final String WRAPPED = "$__localMongoPipeline";
    /** Marks a wrapped pipeline whose statement also had arrayFilters (refused, but by the statement). */
    private static final String WITH_ARRAY_FILTERS = "$__localMongoArrayFilters";
    private static final Set<String> ALLOWED = Set.of("$addFields", "$set", "$project", "$unset", "$replaceRoot",
        "$replaceWith");
    /** Stages MongoDB knows but refuses in an update (72); any other name is unknown (40324). */
    private static final Set<String> KNOWN = Set.of("$match", "$group", "$sort", "$limit", "$skip", "$lookup",
        "$unwind", "$out", "$merge", "$facet", "$count", "$sample", "$bucket", "$bucketAuto", "$graphLookup",
        "$sortByCount", "$redact", "$unionWith", "$densify", "$fill", "$setWindowFields", "$geoNear",
        "$collStats", "$indexStats", "$documents", "$changeStream");

    private UpdatePipeline() {
    }

    /** The update command with each pipeline statement wrapped for the library; the same command if none. */
    static Document wrapStatements(Document command) {
        if (!(command.get("updates") instanceof List<?> statements)
            || statements.stream().noneMatch(s -> s instanceof Document d && d.get("u") instanceof List)) {
            return command;
        }
        List<Object> wrapped = new ArrayList<>();
        for (Object statement : statements) {
            if (statement instanceof Document d && d.get("u") instanceof List<?> stages) {
                Document copy = new Document(d);
                Document pipeline = wrap(stages);
                if (copy.remove("arrayFilters") != null) { // the library would read them against the wrapper
                    pipeline.put(WITH_ARRAY_FILTERS, Boolean.TRUE);
                }
                copy.put("u", pipeline);
                wrapped.add(copy);
            } else {
                wrapped.add(statement);
            }
        }
        Document copy = new Document(command);
        copy.put("updates", wrapped);
        return copy;
    }

    static Document wrap(List<?> stages) {
        return new Document(WRAPPED, stages);
    }

    /** MongoDB's checks of an update pipeline's stages (errors of the statement, not the command). */
    static void validate(Document wrapped) {
        if (wrapped.containsKey(WITH_ARRAY_FILTERS)) {
            throw new MongoServerError(9, "FailedToParse", "Cannot specify arrayFilters and a pipeline update");
        }
        for (Object stage : (List<?>) wrapped.get(WRAPPED)) {
            if (!(stage instanceof Document document) || document.size() != 1) {
                throw new MongoServerError(40323, "Location40323",
                    "A pipeline stage specification object must contain exactly one field.");
            }
            String name = document.keySet().iterator().next();
            if (!ALLOWED.contains(name)) {
                throw KNOWN.contains(name)
                    ? new MongoServerError(72, "InvalidOptions", name + " is not allowed to be used within an update")
                    : new MongoServerError(40324, "Location40324", "Unrecognized pipeline stage name: '" + name + "'");
            }
        }
    }

    static boolean isWrapped(Object update) {
        return update instanceof Document document && document.containsKey(WRAPPED);
    }

    /** {@code document} after the wrapped pipeline; {@code document} is not changed. */
    static Document apply(Document wrapped, Document document) {
        Document current = document.cloneDeeply();
        for (Object stage : (List<?>) wrapped.get(WRAPPED)) {
            Map.Entry<String, Object> only = ((Document) stage).entrySet().iterator().next();
            current = switch (only.getKey()) {
                case "$set", "$addFields" -> addFields(only.getKey(), only.getValue(), current);
                case "$unset" -> unset(only.getValue(), current);
                case "$project" -> new ProjectStage(only.getValue()).apply(Stream.of(current)).findFirst().orElseThrow();
                case "$replaceWith" -> replaceRoot(only.getValue(), current);
                default -> replaceRoot(only.getValue() instanceof Document spec ? spec.get("newRoot") : null, current);
            };
        }
        return withOriginalId(document, current);
    }

    private static Document addFields(String stage, Object spec, Document document) {
        if (!(spec instanceof Document fields) || fields.isEmpty()) {
            throw new MongoServerError(40177, "Location40177", "Invalid " + stage
                + " :: caused by :: specification must have at least one field");
        }
        Document result = document.cloneDeeply();
        put(result, fields, document);
        return result;
    }

    /** Sets each field of {@code spec}; a nested object spec merges into the sub-document. */
    private static void put(Document target, Document spec, Document root) {
        for (Map.Entry<String, Object> field : spec.entrySet()) {
            String[] path = field.getKey().split("\\.", -1);
            for (String part : path) {
                PipelineExpression.checkFieldName(part);
            }
            Document parent = target;
            for (int i = 0; i < path.length - 1; i++) {
                parent = subDocument(parent, path[i]);
            }
            String last = path[path.length - 1];
            Object expression = field.getValue();
            if (expression instanceof Document nested && !nested.isEmpty()
                && !nested.keySet().iterator().next().startsWith("$")) {
                put(subDocument(parent, last), nested, root);
                continue;
            }
            Object value = PipelineExpression.evaluate(expression, root);
            if (value instanceof Missing) {
                parent.remove(last);
            } else {
                parent.put(last, value);
            }
        }
    }

    private static Document subDocument(Document parent, String name) {
        if (parent.get(name) instanceof Document existing) {
            return existing;
        }
        Document created = new Document();
        parent.put(name, created);
        return created;
    }

    private static Document unset(Object spec, Document document) {
        List<?> paths = spec instanceof List<?> list ? list : List.of(spec);
        Document result = document.cloneDeeply();
        for (Object path : paths) {
            if (!(path instanceof String text)) {
                throw new MongoServerError(31120, "Location31120",
                    "$unset specification must be a string or an array containing only string values");
            }
            String[] parts = text.split("\\.", -1);
            Document parent = result;
            for (int i = 0; i < parts.length - 1 && parent != null; i++) {
                parent = parent.get(parts[i]) instanceof Document d ? d : null;
            }
            if (parent != null) {
                parent.remove(parts[parts.length - 1]);
            }
        }
        return result;
    }

    private static Document replaceRoot(Object expression, Document document) {
        Object value = PipelineExpression.evaluate(expression, document);
        if (!(value instanceof Document replacement)) {
            throw new MongoServerError(40228, "Location40228", "'replacement document' must evaluate to an object, but "
                + "resulting value was: " + (value instanceof Missing ? "MISSING" : value) + ". Type of resulting value: '"
                + GuardExpression.typeName(value) + "'.");
        }
        return replacement;
    }

    /** The pipeline's result with the original {@code _id} first; a changed {@code _id} is refused. */
    private static Document withOriginalId(Document original, Document result) {
        Object id = original.get("_id");
        if (result.containsKey("_id") && id != null && !GuardExpression.same(id, result.get("_id"))) {
            throw new MongoServerError(66, "ImmutableField",
                "After applying the update, the (immutable) field '_id' was found to have been altered to _id: "
                    + result.get("_id"));
        }
        Document ordered = new Document();
        Object kept = result.containsKey("_id") ? result.get("_id") : id;
        if (kept != null) {
            ordered.put("_id", kept);
        }
        for (Map.Entry<String, Object> field : result.entrySet()) {
            if (!field.getKey().equals("_id")) {
                ordered.put(field.getKey(), field.getValue());
            }
        }
        return ordered;
    }
}
