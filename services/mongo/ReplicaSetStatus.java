import java.time.Instant;
import java.util.ArrayList;
import java.util.List;

import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.bson.ObjectId;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * {@code replSetGetStatus} and {@code replSetGetConfig} as a replica set's primary answers them,
 * with secondaries and arbiters a test declares, so that what the tool reads of a replica set
 * (replication lag, which members count) goes through the real client path.
 *
 * <p>Until a test declares members the server answers both as a standalone mongod does (76
 * NoReplicationEnabled, "not running with --replSet"). The test-only commands, on admin:
 *
 * <pre>{setReplicaSetMembers: [{lag: 2}, {secondaryDelaySecs: 3600, hidden: true, priority: 0, votes: 0},
 *                        {arbiterOnly: true}]}
 * {setSecondaryLag: [SECONDS, ...]}   (shorthand: one plain secondary per element)</pre>
 *
 * Member options are those of a replica set configuration ({@link ReplicaSetMember}), plus
 * {@code lag}: how far that member's data is behind the primary besides its delay. {@code []}
 * goes back to standalone. Reply shapes: MongoDB 6.0's (docs: replSetGetStatus, replSetGetConfig
 * output), trimmed of the fields nothing reads (election metrics, heartbeat times).
 */
final class ReplicaSetStatus {
    static final String SET_NAME = "local";

    private List<ReplicaSetMember> members = List.of(); // guarded by this; the primary not included
    private ObjectId replicaSetId = new ObjectId();      // guarded by this

    static boolean handles(String database, String command) {
        return database.equals("admin") && (command.equalsIgnoreCase("replSetGetStatus")
            || command.equalsIgnoreCase("replSetGetConfig") || command.equalsIgnoreCase("setSecondaryLag")
            || command.equalsIgnoreCase("setReplicaSetMembers"));
    }

    /**
     * @param applied the primary's last applied operation (replies' operationTime)
     * @param committed the majority commit point: no write before it is still invisible
     */
    synchronized Document handle(String command, Document query, Instant now, BsonTimestamp applied,
                                 BsonTimestamp committed) {
        if (command.equalsIgnoreCase("setSecondaryLag")) {
            return declare(lagsOnly(query.get(command)));
        } else if (command.equalsIgnoreCase("setReplicaSetMembers")) {
            return declare(parse(query.get(command)));
        } else if (members.isEmpty()) {
            throw new MongoServerError(76, "NoReplicationEnabled", "not running with --replSet");
        }
        return command.equalsIgnoreCase("replSetGetConfig") ? config() : status(now, applied, committed);
    }

    private Document declare(List<ReplicaSetMember> declared) {
        members = List.copyOf(declared);
        replicaSetId = new ObjectId();
        return new Document("ok", 1.0);
    }

    private static List<ReplicaSetMember> lagsOnly(Object given) {
        if (!(given instanceof List<?> lags)) {
            throw new MongoServerError(2, "BadValue", "setSecondaryLag takes a list of seconds, one per secondary");
        }
        List<ReplicaSetMember> parsed = new ArrayList<>();
        for (Object lag : lags) {
            if (!(lag instanceof Number number) || number.doubleValue() < 0) {
                throw new MongoServerError(2, "BadValue", "a secondary's lag must be a number of seconds >= 0: " + lag);
            }
            parsed.add(ReplicaSetMember.secondary(parsed.size() + 1, number.doubleValue()));
        }
        return parsed;
    }

    private static List<ReplicaSetMember> parse(Object given) {
        if (!(given instanceof List<?> declared)) {
            throw new MongoServerError(2, "BadValue",
                "setReplicaSetMembers takes a list of members, e.g. [{lag: 2}, {arbiterOnly: true}]");
        }
        List<ReplicaSetMember> parsed = new ArrayList<>();
        for (Object member : declared) {
            parsed.add(ReplicaSetMember.parse(parsed.size() + 1, member));
        }
        long voters = 1 + parsed.stream().filter(m -> m.votes() > 0).count();
        if (voters > 7) {
            throw new MongoServerError(2, "BadValue", "Replica set configuration contains " + voters
                + " voting members, but must be at most 7");
        }
        return parsed;
    }

    private Document config() {
        List<Document> listed = new ArrayList<>();
        listed.add(ReplicaSetMember.primary().toConfig());
        for (ReplicaSetMember member : members) {
            listed.add(member.toConfig());
        }
        Document settings = new Document("chainingAllowed", Boolean.TRUE).append("heartbeatIntervalMillis", 2000)
            .append("heartbeatTimeoutSecs", 10).append("electionTimeoutMillis", 10000)
            .append("catchUpTimeoutMillis", -1).append("catchUpTakeoverDelayMillis", 30000)
            .append("getLastErrorModes", new Document())
            .append("getLastErrorDefaults", new Document("w", 1).append("wtimeout", 0))
            .append("replicaSetId", replicaSetId);
        Document config = new Document("_id", SET_NAME).append("version", 1).append("term", 1)
            .append("members", listed).append("protocolVersion", 1L)
            .append("writeConcernMajorityJournalDefault", Boolean.TRUE).append("settings", settings);
        return new Document("config", config).append("ok", 1.0);
    }

    private Document status(Instant now, BsonTimestamp applied, BsonTimestamp committed) {
        List<Document> listed = new ArrayList<>();
        listed.add(ReplicaSetMember.primary().toStatus(now, true));
        for (ReplicaSetMember member : members) {
            listed.add(member.toStatus(now, false));
        }
        long voting = 1 + members.stream().filter(m -> m.votes() > 0).count();
        long writableVoting = 1 + members.stream().filter(m -> m.votes() > 0 && !m.arbiterOnly()).count();
        long majority = voting / 2 + 1;
        Document optimes = new Document("lastCommittedOpTime", opTime(committed))
            .append("lastCommittedWallTime", wall(committed))
            .append("readConcernMajorityOpTime", opTime(committed))
            .append("appliedOpTime", opTime(applied)).append("durableOpTime", opTime(applied))
            .append("lastAppliedWallTime", wall(applied)).append("lastDurableWallTime", wall(applied));
        return new Document("set", SET_NAME).append("date", now).append("myState", 1).append("term", 1L)
            .append("syncSourceHost", "").append("syncSourceId", -1).append("heartbeatIntervalMillis", 2000L)
            .append("majorityVoteCount", (int) majority).append("writeMajorityCount", (int) Math.min(majority,
                writableVoting)).append("votingMembersCount", (int) voting)
            .append("writableVotingMembersCount", (int) writableVoting).append("optimes", optimes)
            .append("members", listed).append("ok", 1.0);
    }

    private static Document opTime(BsonTimestamp ts) {
        return new Document("ts", ts).append("t", 1L);
    }

    private static Instant wall(BsonTimestamp ts) {
        return Instant.ofEpochSecond(ts.getValue() >>> 32);
    }
}
