import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * The server answering as a mongos (a sharded cluster's router) answers, so the tool's
 * sharded-cluster code paths run against what MongoDB would return. It shards nothing: the data
 * stays in one process; a test seeds the {@code config} database with the metadata a cluster
 * keeps (config.shards, config.collections, config.chunks), and {@link ShardKeyTargeting} counts
 * the single-document writes a mongos could not target by shard key.
 *
 * <p>Test-only, on admin: {@code {setMongosMode: true}} (false to go back). While on:
 * <ul>
 * <li>{@code hello}/{@code isMaster} carry {@code msg: "isdbgrid"} and no replica set fields;</li>
 * <li>{@code replSetGetStatus} fails as mongos's stub answers it (src/mongo/s/commands/
 * cluster_repl_set_get_status_cmd.cpp): {@code {info: "mongos", ok: 0, errmsg:
 * "replSetGetStatus is not supported through mongos"}}, no code;</li>
 * <li>{@code replSetGetConfig} does not exist on mongos: 59 CommandNotFound;</li>
 * <li>any command on the {@code local} database fails with 20 IllegalOperation, "Can't use
 * 'local' database through mongos" (src/mongo/s/commands/strategy.cpp), so the oplog can not be
 * read through it;</li>
 * <li>serverStatus says {@code process: "mongos"}.</li>
 * </ul>
 */
final class MongosMode {
    final ModeSwitch mode = new ModeSwitch("setMongosMode");

    boolean on() {
        return mode.on();
    }

    /** mongos's own answer to {@code command}, or null when it answers as a mongod would. */
    Document refusal(String database, String command) {
        if (!on()) {
            return null;
        }
        if (database.equals("local")) {
            throw new MongoServerError(20, "IllegalOperation", "Can't use 'local' database through mongos");
        }
        if (command.equalsIgnoreCase("replSetGetStatus")) {
            return new Document("info", "mongos").append("ok", 0.0)
                .append("errmsg", "replSetGetStatus is not supported through mongos");
        }
        if (command.equalsIgnoreCase("replSetGetConfig")) {
            throw new MongoServerError(59, "CommandNotFound", "no such command: '" + command + "'");
        }
        return null;
    }

    /** hello as a mongos answers it. */
    Document hello(Document reply) {
        if (on()) {
            reply.remove("setName");
            reply.remove("hosts");
            reply.remove("secondary");
            reply.put("msg", "isdbgrid");
        }
        return reply;
    }

    Document serverStatus(Document status) {
        if (on()) {
            status.put("process", "mongos");
        }
        return status;
    }
}
