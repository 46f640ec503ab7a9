import java.time.Duration;
import java.time.Instant;
import java.util.Set;

import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * One secondary or arbiter a test declared ({@code setReplicaSetMembers}), as a replica set's
 * configuration holds it, plus how far its data lags behind the primary.
 *
 * <p>The member's options and their checks are MongoDB's (src/mongo/db/repl/member_config.cpp,
 * 6.0+): an arbiter's default priority is 0 and it must vote; a member with a non-zero priority
 * must vote, be visible, undelayed and build indexes; each violation is BadValue (2) with
 * MongoDB's message.
 */
record ReplicaSetMember(int id, String host, boolean arbiterOnly, boolean buildIndexes, boolean hidden,
                        double priority, Document tags, long secondaryDelaySecs, int votes, double lagSeconds) {

    private static final Set<String> FIELDS = Set.of("lag", "host", "arbiterOnly", "buildIndexes", "hidden",
        "priority", "tags", "secondaryDelaySecs", "votes");

    /** A member from a test's declaration; {@code lag} (seconds) is this server's own option. */
    static ReplicaSetMember parse(int id, Object declared) {
        if (!(declared instanceof Document spec)) {
            throw badValue("a member is a document such as {lag: 2} or {arbiterOnly: true}: " + declared);
        }
        for (String field : spec.keySet()) {
            if (!FIELDS.contains(field)) {
                throw badValue("unexpected field '" + field + "' in a member (known: " + FIELDS + ")");
            }
        }
        boolean arbiter = flag(spec, "arbiterOnly", false);
        double priority = number(spec, "priority", arbiter ? 0 : 1);
        int votes = (int) number(spec, "votes", 1);
        long delay = (long) number(spec, "secondaryDelaySecs", 0);
        Document tags = spec.get("tags") instanceof Document given ? given : new Document();
        ReplicaSetMember member = new ReplicaSetMember(id,
            spec.get("host") instanceof String host ? host : "member-" + id + ".local:27017",
            arbiter, flag(spec, "buildIndexes", true), flag(spec, "hidden", false), priority, tags, delay, votes,
            number(spec, "lag", 0));
        member.validate();
        return member;
    }

    /** A secondary that is {@code lag} seconds behind and otherwise as MongoDB's defaults are. */
    static ReplicaSetMember secondary(int id, double lag) {
        return new ReplicaSetMember(id, "member-" + id + ".local:27017", false, true, false, 1, new Document(), 0, 1,
            lag);
    }

    /** The primary (this server), member 0. */
    static ReplicaSetMember primary() {
        return secondary(0, 0);
    }

    private void validate() {
        if (votes != 0 && votes != 1) {
            throw badValue("votes field value is " + votes + " but must be 0 or 1");
        }
        if (priority < 0 || priority > 1000) {
            throw badValue("priority field value of " + priority + " is out of range");
        }
        if (secondaryDelaySecs < 0) {
            throw badValue("secondaryDelaySecs field value of " + secondaryDelaySecs + " seconds is out of range");
        }
        if (lagSeconds < 0) {
            throw badValue("a member's lag must be a number of seconds >= 0: " + lagSeconds);
        }
        if (arbiterOnly && votes == 0) {
            throw badValue("Arbiter must vote (cannot have 0 votes)");
        }
        if (priority != 0) {
            if (votes == 0) {
                throw badValue("priority must be 0 when non-voting (votes:0)");
            }
            if (secondaryDelaySecs > 0) {
                throw badValue("priority must be 0 when secondaryDelaySecs is used");
            }
            if (hidden) {
                throw badValue("priority must be 0 when hidden=true");
            }
            if (!buildIndexes) {
                throw badValue("priority must be 0 when buildIndexes=false");
            }
        }
    }

    /** The member as replSetGetConfig lists it (MongoDB 6.0's fields and order). */
    Document toConfig() {
        return new Document("_id", id).append("host", host).append("arbiterOnly", arbiterOnly)
            .append("buildIndexes", buildIndexes).append("hidden", hidden).append("priority", priority)
            .append("tags", tags).append("secondaryDelaySecs", secondaryDelaySecs).append("votes", votes);
    }

    /**
     * The member as replSetGetStatus lists it. An arbiter holds no data: state 7 and none of the
     * optime fields a data-bearing member has. A secondary applies what the primary applied at
     * {@code primaryOptime}, its delay plus its lag ago.
     */
    Document toStatus(Instant primaryOptime, boolean self) {
        Document status = new Document("_id", id).append("name", host).append("health", 1.0);
        if (arbiterOnly) {
            return status.append("state", 7).append("stateStr", "ARBITER").append("uptime", 0)
                .append("syncSourceHost", "").append("syncSourceId", -1).append("infoMessage", "")
                .append("configVersion", 1).append("configTerm", 1L);
        }
        Instant optime = primaryOptime.minus(Duration.ofMillis(Math.round((secondaryDelaySecs + lagSeconds) * 1000)));
        Document opTime = new Document("ts", new BsonTimestamp(Instant.ofEpochSecond(optime.getEpochSecond()), 1))
            .append("t", 1L);
        status.append("state", self ? 1 : 2).append("stateStr", self ? "PRIMARY" : "SECONDARY").append("uptime", 0)
            .append("optime", opTime).append("optimeDate", optime);
        if (!self) {
            status.append("optimeDurable", opTime).append("optimeDurableDate", optime);
        }
        status.append("lastAppliedWallTime", optime).append("lastDurableWallTime", optime)
            .append("syncSourceHost", self ? "" : "member-0.local:27017").append("syncSourceId", self ? -1 : 0)
            .append("infoMessage", "").append("configVersion", 1).append("configTerm", 1L);
        if (self) {
            status.append("self", Boolean.TRUE);
        }
        return status;
    }

    private static boolean flag(Document spec, String field, boolean otherwise) {
        Object value = spec.get(field);
        if (value == null) {
            return otherwise;
        }
        if (!(value instanceof Boolean bool)) {
            throw new MongoServerError(14, "TypeMismatch", field + " field must be a boolean: " + value);
        }
        return bool;
    }

    private static double number(Document spec, String field, double otherwise) {
        Object value = spec.get(field);
        if (value == null) {
            return otherwise;
        }
        if (!(value instanceof Number n)) {
            throw new MongoServerError(14, "TypeMismatch", field + " field must be a number: " + value);
        }
        return n.doubleValue();
    }

    private static MongoServerError badValue(String message) {
        return new MongoServerError(2, "BadValue", message);
    }
}
