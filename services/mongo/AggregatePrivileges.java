import java.util.ArrayList;
import java.util.List;
import java.util.Set;

import de.bwaldvogel.mongo.backend.Utils;
import de.bwaldvogel.mongo.bson.Document;

/**
 * The privileges an aggregate needs, as MongoDB derives them (auth::getPrivilegesForAggregate and
 * each stage's requiredPrivileges): find on the collection unless the pipeline starts with a
 * stage that is its own source; {@code changeStream} and {@code find} for {@code $changeStream} (on
 * the collection, the database, or every normal collection for a cluster-wide stream); find on
 * the collections {@code $lookup}, {@code $graphLookup} and {@code $unionWith} read (their
 * sub-pipelines too); insert and remove for {@code $out}; insert and update for {@code $merge};
 * collStats, indexStats and inprog for {@code $collStats}, {@code $indexStats} and
 * {@code $currentOp} with allUsers.
 */
final class AggregatePrivileges {
    private static final Set<String> INITIAL_SOURCES = Set.of("$changeStream", "$collStats", "$indexStats",
        "$currentOp", "$listSessions", "$listLocalSessions", "$documents", "$planCacheStats", "$listCatalog",
        "$listSearchIndexes", "$querySettings", "$queryStats", "$shardedDataDistribution");

    private AggregatePrivileges() {
    }

    static List<Privilege> of(String db, Document query) {
        Object target = query.get("aggregate");
        String collection = target instanceof String name ? name : null;
        List<?> pipeline = query.get("pipeline") instanceof List<?> list ? list : List.of();
        boolean bypass = Utils.isTrue(query.get("bypassDocumentValidation"));
        List<Privilege> privileges = new ArrayList<>();
        ResourcePattern source = collection == null
            ? ResourcePattern.database(db) : ResourcePattern.namespace(db, collection);
        if (pipeline.isEmpty() || !INITIAL_SOURCES.contains(stageName(pipeline.get(0)))) {
            privileges.add(Privilege.of(source, "find"));
        }
        stages(db, collection, pipeline, bypass, privileges);
        return Privilege.merge(privileges);
    }

    private static void stages(String db, String collection, List<?> pipeline, boolean bypass, List<Privilege> out) {
        for (Object stage : pipeline) {
            String name = stageName(stage);
            if (name != null) {
                stage(db, collection, name, ((Document) stage).get(name), bypass, out);
            }
        }
    }

    private static void stage(String db, String collection, String name, Object spec, boolean bypass, List<Privilege> out) {
        switch (name) {
            case "$changeStream" -> out.add(Privilege.of(changeStreamTarget(db, collection), "changeStream", "find"));
            case "$collStats" -> out.add(Privilege.of(ResourcePattern.namespace(db, String.valueOf(collection)),
                "collStats"));
            case "$indexStats" -> out.add(Privilege.of(ResourcePattern.namespace(db, String.valueOf(collection)),
                "indexStats"));
            case "$currentOp" -> {
                if (spec instanceof Document options && Utils.isTrue(options.get("allUsers"))) {
                    out.add(Privilege.of(ResourcePattern.cluster(), "inprog"));
                }
            }
            case "$lookup", "$graphLookup" -> {
                Document options = spec instanceof Document d ? d : new Document();
                String from = foreign(db, options.get("from"), out);
                if (options.get("pipeline") instanceof List<?> sub) {
                    stages(db, from, sub, bypass, out);
                }
            }
            case "$unionWith" -> {
                Document options = spec instanceof Document d ? d : new Document("coll", spec);
                String from = foreign(db, options.get("coll"), out);
                if (options.get("pipeline") instanceof List<?> sub) {
                    stages(db, from, sub, bypass, out);
                }
            }
            case "$facet" -> {
                if (spec instanceof Document facets) {
                    for (Object sub : facets.values()) {
                        if (sub instanceof List<?> subPipeline) {
                            stages(db, collection, subPipeline, bypass, out);
                        }
                    }
                }
            }
            case "$out" -> out.add(write(db, spec, bypass, "insert", "remove"));
            case "$merge" -> out.add(write(db, spec instanceof Document d ? d.get("into") : spec, bypass,
                "insert", "update"));
            default -> {
                // every other stage reads only what the stages before it give
            }
        }
    }

    private static ResourcePattern changeStreamTarget(String db, String collection) {
        if (collection == null) {
            return db.equals("admin") ? ResourcePattern.anyNormal() : ResourcePattern.database(db);
        }
        return ResourcePattern.namespace(db, collection);
    }

    /** find on the collection a stage reads ({@code from: "c"} or {@code {db, coll}}); its name. */
    private static String foreign(String db, Object from, List<Privilege> out) {
        String foreignDb = db;
        String collection = null;
        if (from instanceof String name) {
            collection = name;
        } else if (from instanceof Document document) {
            foreignDb = document.get("db") instanceof String d ? d : db;
            collection = document.get("coll") instanceof String c ? c : null;
        }
        if (collection != null) {
            out.add(Privilege.of(ResourcePattern.namespace(foreignDb, collection), "find"));
        }
        return collection;
    }

    /** The privilege a stage writing to a collection ({@code "c"} or {@code {db, coll}}) needs. */
    private static Privilege write(String db, Object target, boolean bypass, String... actions) {
        String targetDb = db;
        String collection = String.valueOf(target);
        if (target instanceof Document document) {
            targetDb = document.get("db") instanceof String d ? d : db;
            collection = String.valueOf(document.get("coll"));
        }
        List<String> all = new ArrayList<>(List.of(actions));
        if (bypass) {
            all.add("bypassDocumentValidation");
        }
        return new Privilege(ResourcePattern.namespace(targetDb, collection), Set.copyOf(all));
    }

    private static String stageName(Object stage) {
        if (stage instanceof Document document && document.size() == 1) {
            return document.keySet().iterator().next();
        }
        return null;
    }
}
