import de.bwaldvogel.mongo.bson.Document;

/** A user as MongoDB names it: {@code {user, db}}; printed {@code user@db}, stored under the id {@code db.user}. */
record UserName(String user, String db) implements Comparable<UserName> {

    String id() {
        return db + "." + user;
    }

    Document toDocument() {
        return new Document("user", user).append("db", db);
    }

    @Override
    public int compareTo(UserName other) {
        int byDb = db.compareTo(other.db);
        return byDb != 0 ? byDb : user.compareTo(other.user);
    }

    @Override
    public String toString() {
        return user + "@" + db;
    }
}
