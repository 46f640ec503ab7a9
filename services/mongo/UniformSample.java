import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;

import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.backend.DatabaseResolver;
import de.bwaldvogel.mongo.backend.aggregation.Aggregation;
import de.bwaldvogel.mongo.backend.aggregation.stage.AggregationStage;
import de.bwaldvogel.mongo.backend.aggregation.stage.SampleStage;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.oplog.Oplog;

/**
 * {@code $sample} as MongoDB's: a uniformly random choice of {@code size} documents; as the first
 * stage of a large collection, for a small share of it, read from random positions without
 * reading the rest, as with MongoDB's pseudo-random cursor.
 *
 * <p>The library's stage sorts with a comparator that returns a new random number on every
 * call: the result stays close to the natural order (samples favour the first documents),
 * and on larger collections the sort fails with "Comparison method violates its general
 * contract!". An aggregate holding {@code $sample} runs here instead, with that stage
 * replaced by a shuffle (Fisher-Yates) and a limit.
 */
final class UniformSample implements AggregationStage {
    private static final Random RANDOM = new SecureRandom();
    private final int size;

    private UniformSample(int size) {
        this.size = size;
    }

    /** The reply of an aggregate with a {@code $sample} stage, or null for any other command. */
    static Document aggregate(MongoDatabase database, String command, Document query, DatabaseResolver resolver,
                              Oplog oplog) {
        if (!command.equalsIgnoreCase("aggregate") || !(query.get("pipeline") instanceof List<?> stages)
            || stages.stream().noneMatch(s -> s instanceof Document d && d.containsKey("$sample"))
            || stages.stream().anyMatch(s -> s instanceof Document d && d.containsKey("$changeStream"))) {
            return null;
        }
        String name = String.valueOf(query.get(command));
        MongoCollection<?> collection = database.resolveCollection(name, false);
        List<Document> random = randomCursor(collection, Aggregation.parse(query.get("pipeline")));
        if (random != null) {
            List<Document> rest = Aggregation.parse(query.get("pipeline"));
            rest.remove(0);
            Aggregation after = Aggregation.fromPipeline(rest, resolver, database, collection, oplog);
            after.validate(query);
            return reply(database, name, after.runStages(random.stream()));
        }
        Aggregation aggregation = Aggregation.fromPipeline(query.get("pipeline"), resolver, database, collection, oplog);
        aggregation.validate(query);
        List<Document> pipeline = Aggregation.parse(query.get("pipeline"));
        List<AggregationStage> built = aggregation.getStages();
        for (int i = 0, sample = 0; i < built.size(); i++) {
            if (built.get(i) instanceof SampleStage) {
                while (!pipeline.get(sample).containsKey("$sample")) {
                    sample++;
                }
                Object size = ((Document) pipeline.get(sample++).get("$sample")).get("size");
                built.set(i, new UniformSample(((Number) size).intValue()));
            }
        }
        return reply(database, name, aggregation.computeResult());
    }

    private static Document reply(MongoDatabase database, String name, List<Document> batch) {
        Document cursor = new Document("id", 0L).append("ns", database.getDatabaseName() + "." + name)
            .append("firstBatch", batch);
        return new Document("cursor", cursor).append("ok", 1.0);
    }

    /**
     * The documents of MongoDB's pseudo-random cursor, or null where MongoDB reads the whole
     * collection: as the first stage, of a collection of more than 100 documents, for at most 5%
     * of them, {@code $sample} picks documents at random positions (src/mongo/db/pipeline/
     * pipeline_d.cpp, {@code kMaxSampleRatioForRandCursor} 0.05).
     */
    private static List<Document> randomCursor(MongoCollection<?> collection, List<Document> pipeline) {
        if (!(collection instanceof IdIndexedMemory.Collection stored) || pipeline.isEmpty()
            || !(pipeline.get(0).get("$sample") instanceof Document spec) || !(spec.get("size") instanceof Number n)) {
            return null;
        }
        int count = stored.count();
        int size = n.intValue();
        if (count <= 100 || size < 0 || size > 0.05 * count) {
            return null;
        }
        return stored.randomDocuments(size, RANDOM);
    }

    @Override
    public String name() {
        return "$sample";
    }

    @Override
    public Stream<Document> apply(Stream<Document> stream) {
        List<Document> all = new ArrayList<>(stream.toList());
        Collections.shuffle(all, RANDOM);
        return all.subList(0, Math.min(size, all.size())).stream();
    }
}
