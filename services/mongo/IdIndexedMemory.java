import java.util.List;
import java.util.concurrent.atomic.LongAdder;
import java.util.stream.Stream;

import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.backend.AbstractMongoCollection;
import de.bwaldvogel.mongo.backend.AbstractUniqueIndex;
import de.bwaldvogel.mongo.backend.ArrayFilters;
import de.bwaldvogel.mongo.backend.CollectionOptions;
import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.backend.Index;
import de.bwaldvogel.mongo.backend.IndexKey;
import de.bwaldvogel.mongo.backend.QueryMatcher;
import de.bwaldvogel.mongo.backend.QueryResult;
import de.bwaldvogel.mongo.backend.Utils;
import de.bwaldvogel.mongo.backend.memory.MemoryCollection;
import de.bwaldvogel.mongo.backend.memory.MemoryDatabase;
import de.bwaldvogel.mongo.backend.DatabaseResolver;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;
import de.bwaldvogel.mongo.oplog.Oplog;
import io.netty.channel.Channel;

/**
 * In-memory databases whose collections use the _id index for any query that pins _id.
 *
 * <p>Stock mongo-java-server uses an index only when the query names exactly the index's keys,
 * so {@code {_id: 5, role: {$exists: false}}} scans the whole collection, as does an update or
 * delete with that filter. MongoDB narrows by the _id index first and then applies the rest of
 * the filter; so do these collections (see docs/testing.md). A query bounding _id by a range
 * reads only that range ({@link SortedIdIndex}), as MongoDB's _id B-tree serves it. They also evaluate the
 * {@code $expr} of guarded writes as MongoDB does ({@link GuardMatcher}).
 */
final class IdIndexedMemory {
    /** Documents read to answer queries, updates and deletes: serverStatus's
     * {@code metrics.queryExecutor.scannedObjects}, as MongoDB counts them. */
    static final LongAdder SCANNED_OBJECTS = new LongAdder();

    private IdIndexedMemory() {
    }

    static final class Database extends MemoryDatabase {
        Database(String databaseName, CursorRegistry cursorRegistry) {
            super(databaseName, cursorRegistry);
        }

        @Override
        public Document handleCommand(Channel channel, String command, Document query, DatabaseResolver resolver,
                                      Oplog oplog) {
            Document sampled = UniformSample.aggregate(this, command, query, resolver, oplog);
            return sampled != null ? sampled : super.handleCommand(channel, command, query, resolver, oplog);
        }

        @Override
        protected Index<Integer> openOrCreateUniqueIndex(String collectionName, String indexName,
                                                         List<IndexKey> keys, boolean sparse) {
            return SortedIdIndex.isIdIndex(keys) ? new SortedIdIndex(indexName, keys, sparse)
                : super.openOrCreateUniqueIndex(collectionName, indexName, keys, sparse);
        }

        @Override
        protected MemoryCollection openOrCreateCollection(String collectionName, CollectionOptions options) {
            return new Collection(this, collectionName, options, cursorRegistry);
        }
    }

    static final class Collection extends MemoryCollection implements UpdateStatements.Store {
        private final QueryMatcher matcher;
        /** Stored documents with a top-level name holding "." or starting with "$" (guarded by this). */
        private int oddDocuments;
        /** The highest position a document was stored at (guarded by this): random picks stay below it. */
        private int highestPosition = -1;

        Collection(MongoDatabase database, String collectionName, CollectionOptions options,
                   CursorRegistry cursorRegistry) {
            super(database, collectionName, options, cursorRegistry);
            matcher = GuardMatcher.install(this);
        }

        // Updates the library can not run go to UpdateStatements; the others stay the library's.
        @Override
        public synchronized Document updateDocuments(Document selector, Document update, ArrayFilters arrayFilters,
                                                     boolean multi, boolean upsert, Oplog oplog) {
            if (UpdatePipeline.isWrapped(update) || oddDocuments > 0 || FieldNameUpdates.oddReplacement(update)
                || (upsert && FieldNameUpdates.namesDollarField(update))) {
                return UpdateStatements.update(this, selector, update, arrayFilters, multi, upsert, oplog);
            }
            return super.updateDocuments(selector, update, arrayFilters, multi, upsert, oplog);
        }

        @Override
        public synchronized Document findAndModify(Document query) {
            Object update = query.get("update");
            boolean ours = update instanceof List || (update instanceof Document document
                && (oddDocuments > 0 || FieldNameUpdates.oddReplacement(document)
                || (Utils.isTrue(query.get("upsert")) && FieldNameUpdates.namesDollarField(document))));
            return ours && !Utils.isTrue(query.get("remove")) ? UpdateStatements.findAndModify(this, query)
                : super.findAndModify(query);
        }

        @Override
        public AbstractMongoCollection<?> collection() {
            return this;
        }

        @Override
        public Iterable<Document> matching(Document selector) {
            return queryDocuments(selector, null, 0, 0, 0, null);
        }

        @Override
        public Integer matchPosition(Document document, Document selector) {
            return matcher.matchPosition(document, selector);
        }

        /** As the library stores an update (indexes, size, the document in place), but any field name. */
        @Override
        public boolean store(Document document, Document after) {
            if (after.equals(document)) {
                return false;
            }
            Document before = document.cloneDeeply();
            for (Index<Integer> index : getIndexes()) {
                index.checkUpdate(before, after, this);
            }
            Integer position = position(before);
            for (Index<Integer> index : getIndexes()) {
                index.updateInPlace(before, after, position, this);
            }
            if (tracksDataSize()) {
                updateDataSize(ChangeStreamOplog.bsonSize(after) - ChangeStreamOplog.bsonSize(before));
            }
            document.clear();
            document.putAll(after);
            handleUpdate(position, before, document);
            return true;
        }

        private Integer position(Document document) {
            for (Index<Integer> index : getIndexes()) {
                Integer position = index.getPosition(document);
                if (position != null) {
                    return position;
                }
            }
            return findDocumentPosition(document);
        }

        @Override
        protected Integer addDocumentInternal(Document document) {
            if (FieldNameUpdates.hasOddNames(document)) {
                oddDocuments++;
            }
            Integer position = super.addDocumentInternal(document);
            highestPosition = Math.max(highestPosition, position);
            return position;
        }

        /**
         * {@code size} documents picked at random positions, reading only those: the pseudo-random
         * cursor MongoDB's {@code $sample} uses as the first stage of a large collection. A
         * document picked again is passed over; after 100 such misses in a row the sample fails
         * with 28799, as DocumentSourceSampleFromRandomCursor does. Copies, as a query returns them.
         */
        synchronized List<Document> randomDocuments(int size, java.util.Random random) {
            List<Document> picked = new java.util.ArrayList<>(size);
            java.util.Set<Object> seen = new java.util.HashSet<>();
            int attempts = 0;
            while (picked.size() < size && highestPosition >= 0) {
                Document document = getDocument(random.nextInt(highestPosition + 1));
                if (document == null) { // a deleted document's position: the storage engine skips it
                    continue;
                }
                SCANNED_OBJECTS.increment();
                if (!seen.add(document.get("_id"))) {
                    if (++attempts >= 100) {
                        throw new MongoServerError(28799, "$sample stage could not find a non-duplicate document "
                            + "after 100 while using a random cursor. This is likely a sporadic failure, please "
                            + "try again.");
                    }
                    continue;
                }
                attempts = 0;
                picked.add(document.cloneDeeply());
            }
            return picked;
        }

        @Override
        protected QueryResult queryDocuments(Document query, Document orderBy, int numberToSkip, int limit,
                                             int batchSize, Document fieldSelector) {
            Document byId = idCondition(query);
            if (byId != null) {
                for (Index<Integer> index : getIndexes()) {
                    if (index.canHandle(byId)) {
                        // Candidates from the index; the whole query still decides which match.
                        return matchDocuments(query, index.getPositions(byId), orderBy, numberToSkip, limit,
                            batchSize, fieldSelector);
                    }
                }
            }
            for (Index<Integer> index : getIndexes()) {
                if (index instanceof SortedIdIndex sorted) {
                    List<Integer> positions = sorted.narrow(query);
                    if (positions != null) {
                        return matchDocuments(query, positions, orderBy, numberToSkip, limit, batchSize,
                            fieldSelector);
                    }
                }
            }
            return super.queryDocuments(query, orderBy, numberToSkip, limit, batchSize, fieldSelector);
        }

        @Override
        protected QueryResult matchDocumentsFromStream(Stream<Document> documentStream, Document query,
                                                       Document orderBy, int numberToSkip, int limit,
                                                       int batchSize, Document fieldSelector) {
            return super.matchDocumentsFromStream(documentStream.peek(document -> SCANNED_OBJECTS.increment()),
                query, orderBy, numberToSkip, limit, batchSize, fieldSelector);
        }

        // The document before an update or a delete: a pre-image, if the collection keeps them.
        @Override
        protected void handleUpdate(Integer position, Document oldDocument, Document newDocument) {
            oddDocuments += (FieldNameUpdates.hasOddNames(newDocument) ? 1 : 0)
                - (FieldNameUpdates.hasOddNames(oldDocument) ? 1 : 0);
            PreImages.take(getFullName(), oldDocument);
            super.handleUpdate(position, oldDocument, newDocument);
        }

        @Override
        protected void removeDocument(Integer position) {
            if (FieldNameUpdates.hasOddNames(getDocument(position))) {
                oddDocuments--;
            }
            PreImages.take(getFullName(), getDocument(position));
            super.removeDocument(position);
        }

        /**
         * The stored document with this _id (straight from the _id index, without a query), or
         * null; only while holding the collection's monitor, and not to be kept or returned.
         */
        Document liveById(Object id) {
            Document key = new Document("_id", id);
            for (Index<Integer> index : getIndexes()) {
                if (index instanceof AbstractUniqueIndex<Integer> unique && unique.canHandle(key)) {
                    Integer position = unique.getPosition(key);
                    return position == null ? null : getDocument(position);
                }
            }
            for (Document document : handleQuery(new Document("_id", new Document("$in", List.of(id))))) {
                return document;
            }
            return null;
        }

        /** {_id: cond} when the query requires _id to satisfy cond besides other conditions. */
        private static Document idCondition(Document query) {
            if (query.size() > 1 && query.containsKey("_id")) {
                return new Document("_id", query.get("_id"));
            }
            if (query.size() == 1 && query.get("$and") instanceof List<?> clauses) {
                for (Object clause : clauses) {
                    if (clause instanceof Document document && document.containsKey("_id")) {
                        return new Document("_id", document.get("_id"));
                    }
                }
            }
            return null;
        }
    }
}
