import java.util.ArrayList;
import java.util.List;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * The resource of a privilege, as MongoDB's role documents spell it: {@code {cluster: true}},
 * {@code {anyResource: true}} or {@code {db, collection}} where an empty db means "any database"
 * and an empty collection "any collection" (MongoDB's ResourcePattern, resource_pattern.h).
 *
 * <p>{@link #searchList()} is the list of patterns that grant a privilege on this target, as
 * AuthorizationSessionImpl's buildResourceSearchList builds it: collections whose name starts
 * with {@code system.} are not "normal" (only a pattern naming them matches), and the
 * {@code local} and {@code config} databases are not matched by "any normal resource".
 */
record ResourcePattern(Kind kind, String db, String collection) implements Comparable<ResourcePattern> {

    enum Kind { ANY, CLUSTER, ANY_NORMAL, DATABASE, COLLECTION_NAME, NAMESPACE }

    static ResourcePattern any() {
        return new ResourcePattern(Kind.ANY, "", "");
    }

    static ResourcePattern cluster() {
        return new ResourcePattern(Kind.CLUSTER, "", "");
    }

    static ResourcePattern anyNormal() {
        return new ResourcePattern(Kind.ANY_NORMAL, "", "");
    }

    static ResourcePattern database(String db) {
        return new ResourcePattern(Kind.DATABASE, db, "");
    }

    static ResourcePattern collectionName(String collection) {
        return new ResourcePattern(Kind.COLLECTION_NAME, "", collection);
    }

    static ResourcePattern namespace(String db, String collection) {
        return new ResourcePattern(Kind.NAMESPACE, db, collection);
    }

    /** The pattern a privilege document's {@code resource} names (privilege_parser, auth_types.idl). */
    static ResourcePattern parse(Object resource) {
        if (!(resource instanceof Document document)) {
            throw new MongoServerError(2, "BadValue", "Privilege resource must be an object: " + resource);
        }
        if (document.containsKey("cluster") || document.containsKey("anyResource")) {
            String name = document.containsKey("cluster") ? "cluster" : "anyResource";
            if (document.size() != 1 || !Boolean.TRUE.equals(document.get(name))) {
                throw new MongoServerError(2, "BadValue",
                    "resource: {" + name + ": true} takes no other field and only the value true");
            }
            return name.equals("cluster") ? cluster() : any();
        }
        if (!(document.get("db") instanceof String db) || !(document.get("collection") instanceof String coll)
            || document.size() != 2) {
            throw new MongoServerError(2, "BadValue",
                "resource must be {cluster: true}, {anyResource: true} or {db: <string>, collection: <string>}: "
                    + document.toString(true));
        }
        if (db.isEmpty()) {
            return coll.isEmpty() ? anyNormal() : collectionName(coll);
        }
        return coll.isEmpty() ? database(db) : namespace(db, coll);
    }

    Document toDocument() {
        return switch (kind) {
            case ANY -> new Document("anyResource", Boolean.TRUE);
            case CLUSTER -> new Document("cluster", Boolean.TRUE);
            default -> new Document("db", db).append("collection", collection);
        };
    }

    /** Whether this is one database, or a collection in it (what a non-admin role may be granted). */
    boolean isWithin(String database) {
        return (kind == Kind.DATABASE || kind == Kind.NAMESPACE) && db.equals(database);
    }

    /** Every pattern that grants a privilege on this target, this one included. */
    List<ResourcePattern> searchList() {
        List<ResourcePattern> list = new ArrayList<>();
        list.add(any());
        if (kind == Kind.NAMESPACE) {
            if (isNormalCollection()) {
                if (isNormalDatabase(db)) {
                    list.add(anyNormal());
                }
                list.add(database(db));
            }
            list.add(collectionName(collection));
        } else if (kind == Kind.DATABASE && isNormalDatabase(db)) {
            list.add(anyNormal());
        }
        list.add(this);
        return list;
    }

    private boolean isNormalCollection() {
        return !collection.startsWith("system.") && !(db.equals("local") && collection.startsWith("replset."));
    }

    private static boolean isNormalDatabase(String db) {
        return !db.equals("local") && !db.equals("config");
    }

    @Override
    public int compareTo(ResourcePattern other) {
        int byKind = kind.compareTo(other.kind);
        if (byKind != 0) {
            return byKind;
        }
        int byDb = db.compareTo(other.db);
        return byDb != 0 ? byDb : collection.compareTo(other.collection);
    }

    @Override
    public String toString() {
        return toDocument().toString(true);
    }
}
