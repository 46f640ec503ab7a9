import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * Whether a connection may run a command, as MongoDB decides it (AuthorizationSessionImpl,
 * commands.cpp): the privileges of the authenticated user's roles and the roles they inherit,
 * matched by resource (ResourcePattern.searchList); before anyone logs in, the commands that do
 * not require authentication, and from localhost while no user and no role exists the
 * localhost exception's privileges (enough to create the first user on admin). Refusals are
 * MongoDB's: 13 Unauthorized, "Command X requires authentication" (MongoDB 7.0 and later; 6.0
 * says "command") or "not authorized on DB to execute command { ... }".
 */
final class Authorization {
    private static final RoleName ROOT = new RoleName("root", "admin");

    /** _getDefaultPrivileges: what the localhost exception allows (authorization_session_impl.cpp). */
    private static final List<Privilege> LOCALHOST_EXCEPTION = List.of(
        Privilege.of(ResourcePattern.database("admin"), "createUser", "grantRole"),
        Privilege.of(ResourcePattern.database("$external"), "createUser"),
        Privilege.of(ResourcePattern.cluster(), "addShard", "replSetConfigure", "replSetGetStatus"));

    private final UserStore users;
    private final RoleGraph roles;

    Authorization(UserStore users, RoleGraph roles) {
        this.users = users;
        this.roles = roles;
    }

    /** A user dropped since it logged in is logged out, as MongoDB does at the next request. */
    void refresh(AuthSession session) {
        UserName user = session.user();
        if (user != null && !users.exists(user)) {
            session.logOut();
        }
    }

    boolean usesLocalhostException(AuthSession session) {
        return session.user() == null && session.isLocalhost() && users.isEmpty() && roles.isEmpty();
    }

    /** The roles of the authenticated user and every role they inherit (none before login). */
    Set<RoleName> rolesOf(AuthSession session) {
        List<RoleName> direct = session.user() == null ? null : users.roles(session.user());
        return direct == null ? Set.of() : roles.closure(direct);
    }

    /** The privileges of the authenticated user, unmerged (the localhost exception's before login). */
    List<Privilege> privilegesOf(AuthSession session) {
        if (usesLocalhostException(session)) {
            return LOCALHOST_EXCEPTION;
        }
        return roles.privileges(rolesOf(session));
    }

    /** The user's privileges, as connectionStatus shows them: one per resource. */
    List<Privilege> userPrivileges(AuthSession session) {
        return Privilege.merge(roles.privileges(rolesOf(session)));
    }

    boolean holds(AuthSession session, List<Privilege> required) {
        return holds(privilegesOf(session), required);
    }

    /** Whether the actions granted on the patterns that match each required resource cover it. */
    static boolean holds(List<Privilege> granted, List<Privilege> required) {
        Map<ResourcePattern, Set<String>> byResource = new LinkedHashMap<>();
        for (Privilege privilege : granted) {
            byResource.computeIfAbsent(privilege.resource(), r -> new HashSet<>()).addAll(privilege.actions());
        }
        for (Privilege needed : required) {
            Set<String> actions = new HashSet<>();
            for (ResourcePattern pattern : needed.resource().searchList()) {
                actions.addAll(byResource.getOrDefault(pattern, Set.of()));
            }
            if (!actions.contains(ActionTypes.ANY_ACTION) && !actions.containsAll(needed.actions())) {
                return false;
            }
        }
        return true;
    }

    /** Whether the user has any privilege on some resource in {@code db} (isAuthorizedForAnyActionOnAnyResourceInDB). */
    boolean reaches(AuthSession session, String db) {
        for (Privilege privilege : privilegesOf(session)) {
            ResourcePattern resource = privilege.resource();
            switch (resource.kind()) {
                case ANY, COLLECTION_NAME -> {
                    return true;
                }
                case ANY_NORMAL -> {
                    if (!db.equals("local") && !db.equals("config")) {
                        return true;
                    }
                }
                case DATABASE, NAMESPACE -> {
                    if (resource.db().equals(db)) {
                        return true;
                    }
                }
                default -> {
                    // the cluster is in no database
                }
            }
        }
        return false;
    }

    boolean isRoot(AuthSession session) {
        return rolesOf(session).contains(ROOT);
    }

    /**
     * Refuses the command unless the session may run it; returns the privileges it was allowed
     * on (what a cursor it opens keeps needing), empty when it needs none.
     */
    List<Privilege> check(AuthSession session, String db, String command, Document query,
                          CommandPrivileges.Required required) {
        if (required.kind() == CommandPrivileges.Kind.OPEN) {
            return List.of();
        }
        boolean bypass = usesLocalhostException(session);
        if (session.user() == null && !bypass) {
            throw new MongoServerError(13, "Unauthorized", "Command " + command + " requires authentication");
        }
        switch (required.kind()) {
            case AUTHENTICATED -> {
                if (session.user() == null) {
                    throw notAuthorized(db, query);
                }
                return List.of();
            }
            case SELF_CHECKED -> {
                return List.of();
            }
            case ROOT -> {
                if (!isRoot(session)) {
                    throw notAuthorized(db, query);
                }
                return List.of();
            }
            default -> {
                return require(session, db, query, required.alternatives());
            }
        }
    }

    /** The first alternative the session holds in full; refuses the command when it holds none. */
    List<Privilege> require(AuthSession session, String db, Document query, List<List<Privilege>> alternatives) {
        List<Privilege> granted = privilegesOf(session);
        for (List<Privilege> alternative : alternatives) {
            if (holds(granted, alternative)) {
                return alternative;
            }
        }
        throw notAuthorized(db, query);
    }

    /** MongoDB's refusal of a command (commands.cpp, CommandInvocation::checkAuthorization). */
    static MongoServerError notAuthorized(String db, Document query) {
        Document shown = new Document();
        shown.putAll(query);
        if (!shown.containsKey("$db")) {
            shown.put("$db", db); // MongoDB prints the request body, which holds $db
        }
        return new MongoServerError(13, "Unauthorized",
            "not authorized on " + db + " to execute command " + CommandText.of(shown));
    }

    /** One privilege per database named: {@code action} on each. */
    static List<Privilege> onDatabases(String action, List<String> databases) {
        List<Privilege> privileges = new ArrayList<>();
        for (String db : new LinkedHashSet<>(databases)) {
            privileges.add(Privilege.of(ResourcePattern.database(db), action));
        }
        return privileges;
    }
}
