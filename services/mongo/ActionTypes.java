import java.util.Set;
import java.util.TreeSet;

/**
 * The action names a privilege may hold: every action a built-in role grants, and the other
 * action types of MongoDB's list (src/mongo/db/auth/action_type.idl). createRole and updateRole
 * refuse any other name, as MongoDB does ("Unrecognized action privilege strings").
 */
final class ActionTypes {
    private ActionTypes() {
    }

    /** Grants every action on its resource. */
    static final String ANY_ACTION = "anyAction";

    private static final Set<String> KNOWN = new TreeSet<>(BuiltinRoles.actions());

    static {
        KNOWN.addAll(Set.of(ANY_ACTION, "addShard", "advanceClusterTime", "appendOplogNote", "applicationMessage",
            "authSchemaUpgrade", "bypassDocumentValidation", "changeCustomData", "changeOwnCustomData",
            "changeOwnPassword", "changePassword", "changeStream", "cleanupOrphaned", "collMod", "collStats",
            "compact", "connPoolStats", "connPoolSync", "convertToCapped", "cpuProfiler", "createCollection",
            "createIndex", "createRole", "createUser", "dbHash", "dbStats", "dropCollection", "dropDatabase",
            "dropIndex", "dropRole", "dropUser", "enableProfiler", "enableSharding", "find", "flushRouterConfig",
            "fsync", "getCmdLineOpts", "getLog", "getParameter", "getShardMap", "getShardVersion", "grantRole",
            "hostInfo", "impersonate", "indexStats", "inprog", "insert", "internal", "invalidateUserCache",
            "killAnyCursor", "killAnySession", "killCursors", "killop", "listCollections", "listDatabases",
            "listIndexes", "listSessions", "listShards", "logRotate", "moveChunk", "netstat", "planCacheIndexFilter",
            "planCacheRead", "planCacheWrite", "reIndex", "remove", "removeShard", "renameCollectionSameDB",
            "replSetConfigure", "replSetGetConfig", "replSetGetStatus", "replSetHeartbeat", "replSetResizeOplog",
            "replSetStateChange", "resync", "revokeRole", "serverStatus", "setParameter", "shardingState",
            "shutdown", "splitChunk", "splitVector", "storageDetails", "top", "touch", "unlock", "update",
            "useUUID", "validate", "viewRole", "viewUser"));
    }

    static boolean isKnown(String action) {
        return KNOWN.contains(action);
    }
}
