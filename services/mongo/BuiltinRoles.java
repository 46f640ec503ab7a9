import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Stream;

/**
 * MongoDB's built-in roles, with the privileges and subordinate roles MongoDB 8 gives them
 * (src/mongo/db/auth/builtin_roles.yml; the "Built-In Roles" page of the manual lists the same
 * actions). Roles marked admin-only exist on the admin database only; the others on every
 * database. Left out: {@code __system} (the cluster's own identity), the privileges on
 * {@code system.buckets} collections (no time-series collections here) and multitenancy.
 */
final class BuiltinRoles {
    private BuiltinRoles() {
    }

    private enum Match { DATABASE, NAMESPACE, COLLECTION, ANY_NORMAL, CLUSTER, ANY }

    /** A privilege template: db null means the role's own database. */
    private record Grant(Match match, String db, String collection, List<String> actions) {
    }

    /** Subordinate roles by name: on the admin database for admin-only roles, else the role's own. */
    private record Definition(boolean adminOnly, List<String> roles, List<RoleName> fixedRoles, List<Grant> grants) {
    }

    private static final List<String> READ = List.of("changeStream", "collStats", "dbHash", "dbStats", "find",
        "killCursors", "listCollections", "listIndexes", "listSearchIndexes", "planCacheRead");
    private static final List<String> READ_WRITE = join(READ, List.of("cleanupStructuredEncryptionData",
        "compactStructuredEncryptionData", "convertToCapped", "createCollection", "createIndex",
        "createSearchIndexes", "dropCollection", "dropIndex", "dropSearchIndex", "insert", "remove",
        "renameCollectionSameDB", "update", "updateSearchIndex"));
    private static final List<String> USER_ADMIN = List.of("changeCustomData", "changePassword", "createUser",
        "createRole", "dropUser", "dropRole", "grantRole", "revokeRole", "setAuthenticationRestriction",
        "viewUser", "viewRole");
    private static final List<String> DB_ADMIN = List.of("analyze", "bypassDocumentValidation", "collMod",
        "collStats", "compact", "convertToCapped", "createCollection", "dbStats", "dropCollection",
        "dropDatabase", "dropIndex", "dropSearchIndex", "createIndex", "createSearchIndexes", "enableProfiler",
        "listCollections", "listIndexes", "listSearchIndexes", "updateSearchIndex", "planCacheIndexFilter",
        "planCacheRead", "planCacheWrite", "reIndex", "renameCollectionSameDB", "storageDetails", "validate",
        "configureQueryAnalyzer");
    private static final List<String> PROFILE = join(READ, List.of("convertToCapped", "createCollection",
        "dropCollection"));
    private static final List<String> READ_AND_INDEX = join(READ, List.of("createIndex", "createSearchIndexes",
        "dropIndex", "dropSearchIndex"));
    private static final List<String> MONITOR_CLUSTER = List.of("connPoolStats", "getCmdLineOpts",
        "getDefaultRWConcern", "getLog", "getParameter", "getShardMap", "hostInfo", "listDatabases",
        "listSampledQueries", "listSessions", "listShards", "netstat", "operationMetrics", "replSetGetConfig",
        "replSetGetStatus", "serverStatus", "top", "useUUID", "inprog", "shardingState", "allCollectionStats",
        "shardedDataDistribution");
    private static final List<String> MONITOR_DB = List.of("collStats", "dbStats", "getDatabaseVersion",
        "getShardVersion", "indexStats");
    private static final List<String> HOST_CLUSTER = List.of("applicationMessage", "auditConfigure",
        "connPoolSync", "dropConnections", "logRotate", "oidReset", "setParameter", "shutdown", "touch", "unlock",
        "flushRouterConfig", "fsync", "invalidateUserCache", "killAnyCursor", "killAnySession", "killop",
        "replSetResizeOplog", "resync", "trafficRecord", "rotateCertificates", "oidcListKeys", "oidcRefreshKeys");
    private static final List<String> MANAGER_CLUSTER = List.of("appendOplogNote", "applicationMessage",
        "replSetConfigure", "replSetGetConfig", "replSetGetStatus", "replSetStateChange", "resync", "addShard",
        "removeShard", "listSessions", "listShards", "flushRouterConfig", "cleanupOrphaned", "getDefaultRWConcern",
        "runTenantMigration", "setDefaultRWConcern", "setFeatureCompatibilityVersion", "setClusterParameter",
        "getClusterParameter", "setChangeStreamState", "getChangeStreamState", "querySettings", "queryStatsRead",
        "queryStatsReadTransformed", "checkMetadataConsistency", "transitionFromDedicatedConfigServer",
        "transitionToDedicatedConfigServer");
    private static final List<String> MANAGER_DB = List.of("analyzeShardKey", "configureQueryAnalyzer",
        "clearJumboFlag", "splitChunk", "moveChunk", "moveCollection", "enableSharding", "splitVector",
        "refineCollectionShardKey", "reshardCollection");
    private static final List<String> WRITE = List.of("insert", "update", "remove");
    private static final List<String> RESTORE_WRITE = List.of("bypassDocumentValidation", "collMod",
        "convertToCapped", "createCollection", "createIndex", "createSearchIndexes", "dropCollection", "insert",
        "updateSearchIndex");

    private static final Map<String, Definition> ROLES = new LinkedHashMap<>();

    static {
        defineDatabaseRoles();
        defineAnyDatabaseRoles();
        defineClusterRoles();
        defineBackupRoles();
    }

    /** The roles every database has. */
    private static void defineDatabaseRoles() {
        define("read", false, List.of(), database(READ), namespace(null, "system.js", READ));
        define("readWrite", false, List.of(), database(READ_WRITE), namespace(null, "system.js", READ_WRITE));
        define("userAdmin", false, List.of(), database(USER_ADMIN));
        define("dbAdmin", false, List.of(), database(DB_ADMIN), namespace(null, "system.profile", PROFILE));
        define("dbOwner", false, List.of("readWrite", "dbAdmin", "userAdmin"));
        define("enableSharding", false, List.of(), anyNormal(List.of("analyzeShardKey", "enableSharding",
            "moveCollection", "refineCollectionShardKey", "reshardCollection")));
    }

    /** The admin database's roles over all databases. */
    private static void defineAnyDatabaseRoles() {
        define("readAnyDatabase", true, List.of(), anyNormal(READ), cluster(List.of("listDatabases")),
            collection("system.js", READ));
        define("readWriteAnyDatabase", true, List.of("readAnyDatabase"), anyNormal(READ_WRITE),
            collection("system.js", READ_WRITE));
        define("userAdminAnyDatabase", true, List.of(), anyNormal(join(USER_ADMIN, List.of("listCachedAndActiveUsers"))),
            database("local", USER_ADMIN), database("config", USER_ADMIN),
            cluster(List.of("listDatabases", "authSchemaUpgrade", "invalidateUserCache", "viewUser")),
            namespace("admin", "system.users", READ_AND_INDEX), namespace("admin", "system.roles", READ_AND_INDEX),
            collection("system.users", READ), namespace("admin", "system.version", READ),
            namespace("admin", "system.backup_users", READ));
        define("dbAdminAnyDatabase", true, List.of(), cluster(List.of("listDatabases", "applyOps")),
            anyNormal(DB_ADMIN), collection("system.profile", PROFILE));
    }

    /** The admin database's roles over the cluster. */
    private static void defineClusterRoles() {
        defineWith("clusterMonitor", List.of(new RoleName("read", "config"), new RoleName("read", "local")),
            cluster(MONITOR_CLUSTER), anyNormal(MONITOR_DB), database("config", MONITOR_DB),
            namespace("config", "system.sessions", MONITOR_DB), database("local", MONITOR_DB),
            namespace("local", "system.replset", List.of("find")), namespace("local", "replset.election", List.of("find")),
            namespace("local", "replset.minvalid", List.of("find")), collection("system.profile", List.of("find")));
        define("hostManager", true, List.of(), cluster(HOST_CLUSTER), anyNormal(List.of("killCursors")));
        defineWith("clusterManager", List.of(new RoleName("read", "config")), cluster(MANAGER_CLUSTER),
            anyNormal(MANAGER_DB), database("config", MANAGER_DB), database("local", MANAGER_DB),
            namespace("local", "system.replset", READ), new Grant(Match.ANY, "", "", List.of("dbCheck")),
            namespace("local", "system.healthlog", READ), database("config", WRITE), database("local", WRITE),
            namespace("local", "replset.election", WRITE), namespace("local", "replset.minvalid", WRITE));
        define("clusterAdmin", true, List.of("clusterMonitor", "hostManager", "clusterManager"),
            anyNormal(List.of("dropDatabase")),
            new Grant(Match.ANY, "", "", List.of("importCollection", "exportCollection")));
        define("directShardOperations", true, List.of(), cluster(List.of("issueDirectShardOperations")));
    }

    /** The backup and restore roles, and root over all the others. */
    private static void defineBackupRoles() {
        define("__queryableBackup", true, List.of(),
            new Grant(Match.ANY, "", "", List.of("collStats", "listCollections", "listIndexes", "listSearchIndexes")),
            anyNormal(List.of("find")), cluster(List.of("getParameter", "listDatabases", "useUUID")),
            database("config", List.of("find")), database("local", List.of("find")),
            namespace("local", "replset.election", List.of("find")), namespace("local", "replset.minvalid", List.of("find")),
            collection("system.js", List.of("find")), collection("system.users", List.of("find")),
            collection("system.profile", List.of("find")), namespace("admin", "system.backup_users", List.of("find")),
            namespace("admin", "system.roles", List.of("find")), namespace("admin", "system.version", List.of("find")),
            namespace("config", "settings", List.of("find")));
        define("backup", true, List.of("__queryableBackup"),
            cluster(List.of("appendOplogNote", "serverStatus", "setUserWriteBlockMode")),
            namespace("config", "settings", List.of("insert", "update")));
        define("restore", true, List.of(), cluster(List.of("getParameter", "forceUUID", "useUUID",
                "bypassWriteBlockingMode", "setUserWriteBlockMode", "applyOps")),
            database("local", RESTORE_WRITE), database("config", RESTORE_WRITE),
            namespace("local", "system.replset", RESTORE_WRITE), namespace("local", "replset.election", RESTORE_WRITE),
            namespace("local", "replset.minvalid", RESTORE_WRITE), new Grant(Match.ANY, "", "", List.of("listCollections")),
            anyNormal(join(RESTORE_WRITE, USER_ADMIN)), collection("system.js", RESTORE_WRITE),
            namespace("admin", "tempusers", List.of("find")), namespace("admin", "temproles", List.of("find")),
            namespace("admin", "system.backup_users", RESTORE_WRITE),
            namespace("admin", "system.version", join(RESTORE_WRITE, List.of("find"))),
            collection("system.users", join(RESTORE_WRITE, List.of("find", "update", "remove"))),
            namespace("admin", "system.roles", List.of("createIndex")));
        define("root", true, List.of("clusterAdmin", "userAdminAnyDatabase", "dbAdminAnyDatabase",
                "readWriteAnyDatabase", "backup", "restore", "directShardOperations"),
            new Grant(Match.ANY, "", "", List.of("validate")), cluster(List.of("useTenant")),
            namespace("config", "system.preimages", List.of("find", "remove")),
            namespace("config", "system.change_collection", List.of("find", "insert", "remove", "update")));
    }

    static boolean exists(RoleName role) {
        Definition definition = ROLES.get(role.role());
        return definition != null && (!definition.adminOnly() || role.db().equals("admin"));
    }

    /** The built-in roles of a database, in MongoDB's order of definition. */
    static List<RoleName> on(String db) {
        List<RoleName> names = new ArrayList<>();
        ROLES.forEach((name, definition) -> {
            if (!definition.adminOnly() || db.equals("admin")) {
                names.add(new RoleName(name, db));
            }
        });
        return names;
    }

    /** The roles a built-in role inherits directly (none if it is not one). */
    static List<RoleName> roles(RoleName role) {
        if (!exists(role)) {
            return List.of();
        }
        Definition definition = ROLES.get(role.role());
        List<RoleName> roles = new ArrayList<>(definition.fixedRoles());
        for (String name : definition.roles()) {
            roles.add(new RoleName(name, role.db()));
        }
        return roles;
    }

    /** The privileges a built-in role grants directly (none if it is not one). */
    static List<Privilege> privileges(RoleName role) {
        if (!exists(role)) {
            return List.of();
        }
        List<Privilege> privileges = new ArrayList<>();
        for (Grant grant : ROLES.get(role.role()).grants()) {
            String db = grant.db() == null ? role.db() : grant.db();
            ResourcePattern resource = switch (grant.match()) {
                case DATABASE -> ResourcePattern.database(db);
                case NAMESPACE -> ResourcePattern.namespace(db, grant.collection());
                case COLLECTION -> ResourcePattern.collectionName(grant.collection());
                case ANY_NORMAL -> ResourcePattern.anyNormal();
                case CLUSTER -> ResourcePattern.cluster();
                case ANY -> ResourcePattern.any();
            };
            privileges.add(new Privilege(resource, Set.copyOf(grant.actions())));
        }
        return Privilege.merge(privileges);
    }

    /** Every action some built-in role grants. */
    static Set<String> actions() {
        Set<String> actions = new TreeSet<>();
        ROLES.values().forEach(d -> d.grants().forEach(g -> actions.addAll(g.actions())));
        return actions;
    }

    private static void define(String name, boolean adminOnly, List<String> roles, Grant... grants) {
        ROLES.put(name, new Definition(adminOnly, roles, List.of(), List.of(grants)));
    }

    private static void defineWith(String name, List<RoleName> fixedRoles, Grant... grants) {
        ROLES.put(name, new Definition(true, List.of(), fixedRoles, List.of(grants)));
    }

    private static Grant database(List<String> actions) {
        return new Grant(Match.DATABASE, null, "", actions);
    }

    private static Grant database(String db, List<String> actions) {
        return new Grant(Match.DATABASE, db, "", actions);
    }

    private static Grant namespace(String db, String collection, List<String> actions) {
        return new Grant(Match.NAMESPACE, db, collection, actions);
    }

    private static Grant collection(String collection, List<String> actions) {
        return new Grant(Match.COLLECTION, "", collection, actions);
    }

    private static Grant anyNormal(List<String> actions) {
        return new Grant(Match.ANY_NORMAL, "", "", actions);
    }

    private static Grant cluster(List<String> actions) {
        return new Grant(Match.CLUSTER, "", "", actions);
    }

    private static List<String> join(List<String> first, List<String> second) {
        return Stream.concat(first.stream(), second.stream()).distinct().toList();
    }
}
