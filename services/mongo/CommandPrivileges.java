import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;

import de.bwaldvogel.mongo.backend.Utils;
import de.bwaldvogel.mongo.bson.Document;

/**
 * What each command needs of the user who runs it, with MongoDB's action names and resources
 * (each command's doCheckAuthorization in the server's source; auth/authorization_checks.cpp for
 * find, insert, update, delete, create, collMod and aggregate). A command this table does not
 * know is for the root role only: this server cannot tell what MongoDB would ask of it
 * (docs/testing.md lists the commands that are checked).
 */
final class CommandPrivileges {

    /** The commands a client may run before it authenticates (their requiresAuth is false). */
    private static final Set<String> OPEN = Set.of("hello", "ismaster", "saslstart", "saslcontinue", "logout",
        "ping", "buildinfo", "connectionstatus", "whatsmyuri");

    /** The commands any authenticated user may run; which cursors they touch is checked by CursorOwners. */
    private static final Set<String> AUTHENTICATED = Set.of("getmore", "killcursors", "endsessions");

    /**
     * The commands whose handlers check what they need (it depends on what they name), under the
     * localhost exception too: user and role management, and listDatabases, which lists only
     * the databases one has privileges in.
     */
    private static final Set<String> SELF_CHECKED = Set.of("listdatabases", "createuser", "updateuser",
        "dropuser", "usersinfo", "grantrolestouser", "revokerolesfromuser", "createrole", "updaterole",
        "droprole", "rolesinfo");

    /** Commands that need one action on the cluster. */
    private static final Map<String, String> CLUSTER = Map.of("serverstatus", "serverStatus",
        "replsetgetstatus", "replSetGetStatus", "replsetgetconfig", "replSetGetConfig",
        "getparameter", "getParameter", "setparameter", "setParameter", "hostinfo", "hostInfo",
        "getcmdlineopts", "getCmdLineOpts", "getlog", "getLog", "currentop", "inprog");

    /** Commands that need one action on the collection they name. */
    private static final Map<String, String> ON_COLLECTION = Map.of("find", "find", "count", "find",
        "distinct", "find", "delete", "remove", "createindexes", "createIndex", "listindexes", "listIndexes",
        "drop", "dropCollection", "dropindexes", "dropIndex", "collmod", "collMod", "collstats", "collStats");

    enum Kind { OPEN, AUTHENTICATED, SELF_CHECKED, PRIVILEGES, ROOT }

    /** A requirement: for PRIVILEGES, one of the alternatives must be held in full. */
    record Required(Kind kind, List<List<Privilege>> alternatives) {
        static final Required NONE = new Required(Kind.OPEN, List.of());
        static final Required LOGGED_IN = new Required(Kind.AUTHENTICATED, List.of());
        static final Required BY_HANDLER = new Required(Kind.SELF_CHECKED, List.of());
        static final Required ROOT_ONLY = new Required(Kind.ROOT, List.of());

        static Required allOf(List<Privilege> privileges) {
            return new Required(Kind.PRIVILEGES, List.of(privileges));
        }

        static Required allOf(Privilege... privileges) {
            return allOf(List.of(privileges));
        }
    }

    private CommandPrivileges() {
    }

    static Required of(String db, String command, Document query) {
        String name = command.toLowerCase(Locale.ROOT);
        if (OPEN.contains(name)) {
            return Required.NONE;
        }
        if (AUTHENTICATED.contains(name)) {
            return Required.LOGGED_IN;
        }
        if (SELF_CHECKED.contains(name)) {
            return Required.BY_HANDLER;
        }
        if (CLUSTER.containsKey(name)) {
            return Required.allOf(Privilege.of(ResourcePattern.cluster(), CLUSTER.get(name)));
        }
        Object target = query.get(command);
        if (ON_COLLECTION.containsKey(name)) {
            return target instanceof String collection
                ? Required.allOf(Privilege.of(ResourcePattern.namespace(db, collection), ON_COLLECTION.get(name)))
                : Required.ROOT_ONLY;
        }
        return switch (name) {
            case "aggregate" -> Required.allOf(AggregatePrivileges.of(db, query));
            case "insert" -> onCollection(db, target, withBypass(query, "insert"));
            case "update" -> onCollection(db, target,
                withBypass(query, upserts(query) ? List.of("update", "insert") : List.of("update")));
            case "findandmodify" -> onCollection(db, target, withBypass(query, findAndModify(query)));
            case "create" -> create(db, target, query);
            case "listcollections" -> Required.allOf(Privilege.of(ResourcePattern.database(db), "listCollections"));
            case "dbstats" -> Required.allOf(Privilege.of(ResourcePattern.database(db), "dbStats"));
            case "dropdatabase" -> Required.allOf(Privilege.of(ResourcePattern.database(db), "dropDatabase"));
            case "renamecollection" -> rename(query, target);
            default -> Required.ROOT_ONLY;
        };
    }

    private static Required onCollection(String db, Object target, List<String> actions) {
        if (!(target instanceof String collection)) {
            return Required.ROOT_ONLY;
        }
        return Required.allOf(new Privilege(ResourcePattern.namespace(db, collection), Set.copyOf(actions)));
    }

    private static List<String> withBypass(Document query, List<String> actions) {
        List<String> all = new ArrayList<>(actions);
        if (Utils.isTrue(query.get("bypassDocumentValidation"))) {
            all.add("bypassDocumentValidation");
        }
        return all;
    }

    private static List<String> withBypass(Document query, String action) {
        return withBypass(query, List.of(action));
    }

    private static boolean upserts(Document query) {
        if (query.get("updates") instanceof List<?> updates) {
            for (Object update : updates) {
                if (update instanceof Document statement && Utils.isTrue(statement.get("upsert"))) {
                    return true;
                }
            }
        }
        return false;
    }

    /** find, and remove or update (with insert for an upsert): find_and_modify.cpp. */
    private static List<String> findAndModify(Document query) {
        if (Utils.isTrue(query.get("remove"))) {
            return List.of("find", "remove");
        }
        return Utils.isTrue(query.get("upsert")) ? List.of("find", "update", "insert") : List.of("find", "update");
    }

    /** checkAuthForCreate: createCollection, or insert, on the new collection (convertToCapped too when capped). */
    private static Required create(String db, Object target, Document query) {
        if (!(target instanceof String collection)) {
            return Required.ROOT_ONLY;
        }
        ResourcePattern resource = ResourcePattern.namespace(db, collection);
        List<Privilege> capped = Utils.isTrue(query.get("capped"))
            ? List.of(Privilege.of(resource, "convertToCapped")) : List.of();
        List<Privilege> byCreate = new ArrayList<>(capped);
        byCreate.add(Privilege.of(resource, "createCollection"));
        if (query.containsKey("viewOn")) {
            return Required.allOf(byCreate);
        }
        List<Privilege> byInsert = new ArrayList<>(capped);
        byInsert.add(Privilege.of(resource, "insert"));
        return new Required(Kind.PRIVILEGES, List.of(byCreate, byInsert));
    }

    /**
     * rename_collection_common.cpp: within one database, renameCollectionSameDB on it (with find
     * on the source); otherwise find and dropCollection on the source and insert and createIndex
     * on the target. dropTarget adds dropCollection on the target.
     */
    private static Required rename(Document query, Object target) {
        if (!(target instanceof String from) || !(query.get("to") instanceof String to)
            || from.indexOf('.') < 0 || to.indexOf('.') < 0) {
            return Required.ROOT_ONLY;
        }
        ResourcePattern source = namespaceOf(from);
        ResourcePattern destination = namespaceOf(to);
        List<Privilege> dropTarget = Utils.isTrue(query.get("dropTarget"))
            ? List.of(Privilege.of(destination, "dropCollection")) : List.of();
        List<Privilege> copy = new ArrayList<>(dropTarget);
        copy.add(Privilege.of(source, "find", "dropCollection"));
        copy.add(Privilege.of(destination, "insert", "createIndex"));
        boolean system = source.collection().startsWith("system.") || destination.collection().startsWith("system.");
        if (!source.db().equals(destination.db()) || system) {
            return Required.allOf(copy);
        }
        List<Privilege> sameDb = new ArrayList<>(dropTarget);
        sameDb.add(Privilege.of(ResourcePattern.database(source.db()), "renameCollectionSameDB"));
        sameDb.add(Privilege.of(source, "find"));
        return new Required(Kind.PRIVILEGES, List.of(sameDb, copy));
    }

    private static ResourcePattern namespaceOf(String namespace) {
        int dot = namespace.indexOf('.');
        return ResourcePattern.namespace(namespace.substring(0, dot), namespace.substring(dot + 1));
    }
}
