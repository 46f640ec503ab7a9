import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;

import de.bwaldvogel.mongo.backend.AbstractMongoCollection;
import de.bwaldvogel.mongo.backend.ArrayFilters;
import de.bwaldvogel.mongo.backend.QueryParameters;
import de.bwaldvogel.mongo.backend.Utils;
import de.bwaldvogel.mongo.backend.aggregation.stage.ProjectStage;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;
import de.bwaldvogel.mongo.exception.MongoServerException;
import de.bwaldvogel.mongo.oplog.Oplog;

/**
 * The update and findAndModify statements the library can not run: pipeline-style updates
 * ({@link UpdatePipeline}), and any update of a collection holding documents whose top-level
 * names contain {@code .} or start with {@code $} ({@link FieldNameUpdates}). The same steps as
 * the library's (match, compute the new document, check and update the indexes, store it in
 * place, record the change), with the new document computed MongoDB's way. Nothing is written
 * when computing it fails.
 */
final class UpdateStatements {
    private static final Method CONVERT_SELECTOR = FieldNameUpdates.method("convertSelectorToDocument", Document.class);
    private static final Method DERIVE_ID = FieldNameUpdates.method("deriveDocumentId", Document.class);
    private static final Method PARSE_ARRAY_FILTERS = arrayFiltersParser();

    /** What these statements need of a collection: its matching and its in-place storage. */
    interface Store {
        AbstractMongoCollection<?> collection();

        Iterable<Document> matching(Document selector);

        Integer matchPosition(Document document, Document selector);

        /** Stores {@code after} in place of the stored {@code document}; false when nothing changed. */
        boolean store(Document document, Document after);
    }

    private UpdateStatements() {
    }

    static Document update(Store store, Document selector, Document update, ArrayFilters arrayFilters, boolean multi,
                           boolean upsert, Oplog oplog) {
        boolean pipeline = UpdatePipeline.isWrapped(update);
        if (pipeline) {
            UpdatePipeline.validate(update);
        }
        if (multi && !update.isEmpty() && !update.keySet().iterator().next().startsWith("$")) {
            throw new MongoServerError(10158, "multi update only works with $ operators");
        }
        int matched = 0;
        List<Object> ids = new ArrayList<>();
        List<Document> befores = new ArrayList<>();
        String namespace = store.collection().getFullName();
        try {
            for (Document document : store.matching(selector)) {
                Document before = document.cloneDeeply();
                if (store.store(document, next(store, document, update, arrayFilters, selector))) {
                    ids.add(document.get("_id"));
                    befores.add(before);
                }
                matched++;
                if (!multi) {
                    break;
                }
            }
        } finally { // what a multi-update changed before a document failed is changed: its events too
            if (pipeline && oplog instanceof ChangeStreamOplog history) {
                history.recordRewrites(namespace, befores, store.collection());
            } else {
                oplog.handleUpdate(namespace, selector, update, ids);
            }
        }
        Document result = new Document();
        if (matched == 0 && upsert) {
            Document inserted = upsert(store, selector, update, arrayFilters);
            result.put("upserted", inserted.get("_id"));
            oplog.handleInsert(namespace, List.of(inserted));
        }
        result.put("n", matched);
        result.put("nModified", ids.size());
        return result;
    }

    /** findAndModify with an update (not remove): the document before or after, as asked. */
    static Document findAndModify(Store store, Document query) {
        Object given = query.get("update");
        boolean pipeline = given instanceof List;
        if (pipeline && query.containsKey("arrayFilters")) {
            throw new MongoServerError(9, "FailedToParse", "Cannot specify arrayFilters and a pipeline update");
        }
        Document update = pipeline ? UpdatePipeline.wrap((List<?>) given) : (Document) given;
        if (pipeline) {
            UpdatePipeline.validate(update);
        }
        Document selector = query.get("query") instanceof Document q ? q : new Document();
        Document match = new Document("query", selector);
        if (query.containsKey("sort")) {
            match.put("orderby", query.get("sort"));
        }
        ArrayFilters arrayFilters = pipeline ? ArrayFilters.empty() : parseArrayFilters(query, update);
        boolean returnNew = Utils.isTrue(query.get("new"));
        Document value = null;
        Document lastErrorObject = null;
        for (Document document : store.collection().handleQuery(new QueryParameters(match, 0, 1))) {
            Document before = document.cloneDeeply();
            try {
                store.store(document, next(store, document, update, arrayFilters, selector));
            } catch (MongoServerError e) {
                throw e.shouldPrefixCommandContext() ? new MongoServerError(e.getCode(), e.getCodeName(),
                    "Plan executor error during findAndModify :: caused by :: " + e.getMessageWithoutErrorCode()) : e;
            }
            value = returnNew ? document.cloneDeeply() : before;
            lastErrorObject = new Document("updatedExisting", Boolean.TRUE).append("n", 1);
            break;
        }
        if (lastErrorObject == null && Utils.isTrue(query.get("upsert"))) {
            Document inserted = upsert(store, selector, update, arrayFilters);
            value = returnNew ? inserted.cloneDeeply() : null;
        }
        if (value != null && query.get("fields") instanceof Document fields) {
            value = new ProjectStage(fields).apply(Stream.of(value)).findFirst().orElse(value);
        }
        Document result = new Document();
        if (lastErrorObject != null) {
            result.put("lastErrorObject", lastErrorObject);
        }
        result.put("value", value);
        result.put("ok", 1.0);
        return result;
    }

    private static Document next(Store store, Document document, Document update, ArrayFilters arrayFilters,
                                 Document selector) {
        return UpdatePipeline.isWrapped(update) ? UpdatePipeline.apply(update, document)
            : FieldNameUpdates.apply(store.collection(), document, update, arrayFilters,
                store.matchPosition(document, selector), false);
    }

    /** The document an upsert inserts: the filter's equalities, updated as an insert is checked. */
    private static Document upsert(Store store, Document selector, Document update, ArrayFilters arrayFilters) {
        AbstractMongoCollection<?> collection = store.collection();
        Document base = (Document) call(CONVERT_SELECTOR, collection, selector);
        Document inserted = UpdatePipeline.isWrapped(update) ? UpdatePipeline.apply(update, base)
            : FieldNameUpdates.apply(collection, base, update, arrayFilters, null, true);
        if (!inserted.containsKey("_id")) {
            Document withId = new Document("_id", call(DERIVE_ID, collection, selector));
            withId.putAll(inserted);
            inserted = withId;
        }
        collection.addDocument(inserted);
        return inserted;
    }

    private static ArrayFilters parseArrayFilters(Document query, Document update) {
        return (ArrayFilters) call(PARSE_ARRAY_FILTERS, null, query, update);
    }

    private static Method arrayFiltersParser() {
        try {
            Method method = ArrayFilters.class.getDeclaredMethod("parse", Document.class, Document.class);
            method.setAccessible(true);
            return method;
        } catch (NoSuchMethodException e) {
            throw new IllegalStateException("mongo-java-server changed: no ArrayFilters.parse to call", e);
        }
    }

    private static Object call(Method method, Object target, Object... arguments) {
        try {
            return method.invoke(target, arguments);
        } catch (InvocationTargetException e) {
            if (e.getCause() instanceof MongoServerException error) {
                throw error;
            }
            throw new IllegalStateException(e.getCause());
        } catch (IllegalAccessException e) {
            throw new IllegalStateException(e);
        }
    }
}
