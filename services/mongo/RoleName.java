import java.util.ArrayList;
import java.util.List;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/** A role as MongoDB names it: {@code {role, db}}; printed {@code role@db} as MongoDB prints a RoleName. */
record RoleName(String role, String db) implements Comparable<RoleName> {

    /**
     * The roles of a createUser/createRole/grant command: a string names a role of the command's
     * database, a document {@code {role, db}} any role (auth::resolveRoleNames).
     */
    static List<RoleName> parseAll(Object roles, String defaultDb, String field) {
        if (!(roles instanceof List<?> list)) {
            throw new MongoServerError(14, "TypeMismatch", "\"" + field + "\" must be an array");
        }
        List<RoleName> names = new ArrayList<>();
        for (Object role : list) {
            names.add(parse(role, defaultDb));
        }
        return names;
    }

    static RoleName parse(Object role, String defaultDb) {
        if (role instanceof String name) {
            return new RoleName(name, defaultDb);
        }
        if (role instanceof Document document && document.get("role") instanceof String name
            && document.get("db") instanceof String db) {
            return new RoleName(name, db);
        }
        throw new MongoServerError(2, "BadValue",
            "a role must be a string or a document {role: <string>, db: <string>}: " + role);
    }

    Document toDocument() {
        return new Document("role", role).append("db", db);
    }

    static List<Document> toDocuments(Iterable<RoleName> roles) {
        List<Document> documents = new ArrayList<>();
        roles.forEach(r -> documents.add(r.toDocument()));
        return documents;
    }

    @Override
    public int compareTo(RoleName other) {
        int byDb = db.compareTo(other.db);
        return byDb != 0 ? byDb : role.compareTo(other.role);
    }

    @Override
    public String toString() {
        return role + "@" + db;
    }
}
