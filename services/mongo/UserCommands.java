import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Set;

import de.bwaldvogel.mongo.backend.Utils;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * createUser, updateUser, dropUser, usersInfo, grantRolesToUser and revokeRolesFromUser, with the
 * privileges MongoDB asks of who runs them (user_management_commands_common.cpp: createUser on
 * the database and grantRole on each granted role's database, and so on) and MongoDB's replies.
 */
final class UserCommands {
    private static final Set<String> COMMANDS = Set.of("createuser", "updateuser", "dropuser", "usersinfo",
        "grantrolestouser", "revokerolesfromuser");

    private final UserStore users;
    private final RoleGraph roles;
    private final Authorization authorization;

    UserCommands(UserStore users, RoleGraph roles, Authorization authorization) {
        this.users = users;
        this.roles = roles;
        this.authorization = authorization;
    }

    static boolean handles(String command) {
        return COMMANDS.contains(command.toLowerCase(Locale.ROOT));
    }

    Document handle(AuthSession session, String db, String command, Document query) {
        String name = command.toLowerCase(Locale.ROOT);
        if (name.equals("usersinfo")) {
            return usersInfo(session, db, query);
        }
        UserName user = new UserName(name(query, command), db);
        switch (name) {
            case "createuser" -> {
                List<RoleName> granted = RoleName.parseAll(required(query, command, "roles"), db, "roles");
                List<Privilege> needed = new ArrayList<>(List.of(Privilege.of(ResourcePattern.database(db), "createUser")));
                needed.addAll(Authorization.onDatabases("grantRole", granted.stream().map(RoleName::db).toList()));
                authorization.require(session, db, query, List.of(needed));
                roles.checkExist(granted);
                users.create(user, query.get("pwd"), query.get("mechanisms"), granted, query.get("customData"));
            }
            case "updateuser" -> updateUser(session, db, user, query);
            case "dropuser" -> {
                Privilege dropUser = Privilege.of(ResourcePattern.database(db), "dropUser");
                authorization.require(session, db, query, List.of(List.of(dropUser)));
                users.drop(user);
            }
            default -> changeRoles(session, db, command, user, query, name.equals("grantrolestouser"));
        }
        return new Document("ok", 1.0);
    }

    private void updateUser(AuthSession session, String db, UserName user, Document query) {
        boolean own = user.equals(session.user());
        if (query.containsKey("pwd") || query.containsKey("mechanisms")) {
            requireChange(session, db, query, own, "changePassword", "changeOwnPassword");
        }
        if (query.containsKey("customData")) {
            requireChange(session, db, query, own, "changeCustomData", "changeOwnCustomData");
        }
        List<RoleName> granted = null;
        if (query.containsKey("roles")) {
            granted = RoleName.parseAll(query.get("roles"), db, "roles");
            // "You don't know what roles you might be revoking": revokeRole on every normal database
            List<Privilege> needed = new ArrayList<>(List.of(Privilege.of(ResourcePattern.anyNormal(), "revokeRole")));
            needed.addAll(Authorization.onDatabases("grantRole", granted.stream().map(RoleName::db).toList()));
            authorization.require(session, db, query, List.of(needed));
            roles.checkExist(granted);
        }
        users.update(user, query.get("pwd"), query.get("mechanisms"), granted, query.get("customData"));
    }

    /** The action on the user's database, or for one's own user its "own" variant. */
    private void requireChange(AuthSession session, String db, Document query, boolean own, String action,
                               String ownAction) {
        List<Privilege> plain = List.of(Privilege.of(ResourcePattern.database(db), action));
        authorization.require(session, db, query, own
            ? List.of(plain, List.of(Privilege.of(ResourcePattern.database(db), ownAction))) : List.of(plain));
    }

    private void changeRoles(AuthSession session, String db, String command, UserName user, Document query,
                             boolean grant) {
        List<RoleName> changed = RoleName.parseAll(required(query, command, "roles"), db, "roles");
        if (changed.isEmpty()) {
            throw new MongoServerError(2, "BadValue", command + " command requires a non-empty \"roles\" array");
        }
        authorization.require(session, db, query, List.of(Authorization.onDatabases(
            grant ? "grantRole" : "revokeRole", changed.stream().map(RoleName::db).toList())));
        roles.checkExist(changed);
        users.changeRoles(user, changed, grant);
    }

    /** usersInfo: one's own user always; others with viewUser on their database. */
    private Document usersInfo(AuthSession session, String db, Document query) {
        Object spec = query.get("usersInfo");
        List<UserName> wanted = new ArrayList<>();
        List<Privilege> needed = new ArrayList<>();
        if (spec instanceof Document document && Utils.isTrue(document.get("forAllDBs"))) {
            wanted.addAll(users.names(null));
            needed.add(Privilege.of(ResourcePattern.cluster(), "viewUser"));
        } else if (spec instanceof Number) {
            wanted.addAll(users.names(db));
            needed.add(Privilege.of(ResourcePattern.database(db), "viewUser"));
        } else {
            for (Object one : spec instanceof List<?> list ? list : List.of(spec)) {
                UserName name = userName(one, db);
                wanted.add(name);
                if (!name.equals(session.user())) {
                    needed.add(Privilege.of(ResourcePattern.database(name.db()), "viewUser"));
                }
            }
        }
        authorization.require(session, db, query, List.of(Privilege.merge(needed)));
        List<Document> found = new ArrayList<>();
        for (UserName name : wanted) {
            Document info = users.info(name, Utils.isTrue(query.get("showCredentials")));
            if (info != null) {
                if (Utils.isTrue(query.get("showPrivileges"))) {
                    List<RoleName> direct = users.roles(name);
                    info.put("inheritedRoles", RoleName.toDocuments(roles.closure(direct)));
                    info.put("inheritedPrivileges", Privilege.toDocuments(Privilege.merge(roles.privileges(direct))));
                    info.put("inheritedAuthenticationRestrictions", new ArrayList<>());
                }
                found.add(info);
            }
        }
        return new Document("users", found).append("ok", 1.0);
    }

    private static UserName userName(Object spec, String db) {
        if (spec instanceof String name) {
            return new UserName(name, db);
        }
        if (spec instanceof Document document && document.get("user") instanceof String name
            && document.get("db") instanceof String userDb) {
            return new UserName(name, userDb);
        }
        throw new MongoServerError(2, "BadValue", "User name must be a string or a document {user, db}: " + spec);
    }

    /** The user or role a command names (its first field), which must be a string. */
    static String name(Document query, String command) {
        if (!(query.get(command) instanceof String name)) {
            throw new MongoServerError(14, "TypeMismatch", "BSON field '" + command + "' is the wrong type '"
                + (query.get(command) == null ? "null" : query.get(command).getClass().getSimpleName())
                + "', expected type 'string'");
        }
        return name;
    }

    /** A field the command's IDL marks required (error 40414, as the IDL parser words it). */
    static Object required(Document query, String command, String field) {
        if (!query.containsKey(field)) {
            throw new MongoServerError(40414, "Location40414",
                "BSON field '" + command + "." + field + "' is missing but a required field");
        }
        return query.get(field);
    }
}
