import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Set;

import de.bwaldvogel.mongo.backend.Utils;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * createRole, updateRole, dropRole and rolesInfo, with the privileges MongoDB asks of who runs
 * them (user_management_commands_common.cpp: createRole on the database, grantRole on the
 * database of each inherited role and of each privilege's resource, admin's for the cluster) and
 * MongoDB's replies (the rolesInfo page of the manual: {@code _id} for defined roles,
 * {@code isBuiltin}, {@code roles}, {@code inheritedRoles}, and with showPrivileges
 * {@code privileges} and {@code inheritedPrivileges}).
 */
final class RoleCommands {
    private static final Set<String> COMMANDS = Set.of("createrole", "updaterole", "droprole", "rolesinfo");

    private final UserStore users;
    private final RoleGraph roles;
    private final Authorization authorization;

    RoleCommands(UserStore users, RoleGraph roles, Authorization authorization) {
        this.users = users;
        this.roles = roles;
        this.authorization = authorization;
    }

    static boolean handles(String command) {
        return COMMANDS.contains(command.toLowerCase(Locale.ROOT));
    }

    Document handle(AuthSession session, String db, String command, Document query) {
        String name = command.toLowerCase(Locale.ROOT);
        if (name.equals("rolesinfo")) {
            return rolesInfo(session, db, query);
        }
        RoleName role = new RoleName(UserCommands.name(query, command), db);
        switch (name) {
            case "createrole" -> {
                List<Privilege> privileges = privileges(UserCommands.required(query, command, "privileges"));
                List<RoleName> inherited = RoleName.parseAll(UserCommands.required(query, command, "roles"), db, "roles");
                List<Privilege> needed = new ArrayList<>(List.of(Privilege.of(ResourcePattern.database(db), "createRole")));
                needed.addAll(grants(inherited, privileges));
                authorization.require(session, db, query, List.of(needed));
                roles.create(role, privileges, inherited);
            }
            case "updaterole" -> {
                List<Privilege> privileges = query.containsKey("privileges") ? privileges(query.get("privileges")) : null;
                List<RoleName> inherited = query.containsKey("roles")
                    ? RoleName.parseAll(query.get("roles"), db, "roles") : null;
                // "You don't know what roles or privileges you might be revoking": revokeRole everywhere
                List<Privilege> needed = new ArrayList<>(List.of(Privilege.of(ResourcePattern.anyNormal(), "revokeRole")));
                needed.addAll(grants(inherited == null ? List.of() : inherited,
                    privileges == null ? List.of() : privileges));
                authorization.require(session, db, query, List.of(needed));
                roles.update(role, privileges, inherited);
            }
            default -> {
                Privilege dropRole = Privilege.of(ResourcePattern.database(db), "dropRole");
                authorization.require(session, db, query, List.of(List.of(dropRole)));
                roles.drop(role);
                users.forgetRole(role);
            }
        }
        return new Document("ok", 1.0);
    }

    /** grantRole on the database of each inherited role and each privilege (admin for others). */
    private static List<Privilege> grants(List<RoleName> inherited, List<Privilege> privileges) {
        List<String> databases = new ArrayList<>(inherited.stream().map(RoleName::db).toList());
        for (Privilege privilege : privileges) {
            ResourcePattern resource = privilege.resource();
            boolean inOne = resource.kind() == ResourcePattern.Kind.DATABASE
                || resource.kind() == ResourcePattern.Kind.NAMESPACE;
            databases.add(inOne ? resource.db() : "admin");
        }
        return Authorization.onDatabases("grantRole", databases);
    }

    private static List<Privilege> privileges(Object spec) {
        if (!(spec instanceof List<?> list)) {
            throw new MongoServerError(14, "TypeMismatch", "\"privileges\" must be an array");
        }
        List<Privilege> privileges = new ArrayList<>();
        list.forEach(p -> privileges.add(Privilege.parse(p)));
        return privileges;
    }

    /** rolesInfo: roles one holds always; others with viewRole on their database. Unknown roles are left out. */
    private Document rolesInfo(AuthSession session, String db, Document query) {
        Object spec = query.get("rolesInfo");
        List<RoleName> wanted = new ArrayList<>();
        if (spec instanceof Number) {
            if (Utils.isTrue(query.get("showBuiltinRoles"))) {
                wanted.addAll(BuiltinRoles.on(db));
            }
            wanted.addAll(roles.definedOn(db));
        } else {
            for (Object one : spec instanceof List<?> list ? list : List.of(spec)) {
                wanted.add(RoleName.parse(one, db));
            }
        }
        Set<RoleName> held = authorization.rolesOf(session);
        List<String> viewed = wanted.stream().filter(r -> spec instanceof Number || !held.contains(r))
            .map(RoleName::db).toList();
        authorization.require(session, db, query, List.of(Authorization.onDatabases("viewRole", viewed)));
        boolean showPrivileges = Utils.isTrue(query.get("showPrivileges"));
        List<Document> found = new ArrayList<>();
        for (RoleName role : wanted) {
            if (roles.exists(role)) {
                found.add(describe(role, showPrivileges));
            }
        }
        return new Document("roles", found).append("ok", 1.0);
    }

    private Document describe(RoleName role, boolean showPrivileges) {
        Document stored = roles.storedDocument(role);
        Document info = new Document();
        if (stored != null) {
            info.put("_id", stored.get("_id"));
        }
        info.put("role", role.role());
        info.put("db", role.db());
        if (showPrivileges) {
            info.put("privileges", Privilege.toDocuments(roles.directPrivileges(role)));
        }
        info.put("roles", RoleName.toDocuments(roles.directRoles(role)));
        info.put("isBuiltin", RoleGraph.isBuiltin(role));
        info.put("inheritedRoles", RoleName.toDocuments(roles.inherited(role)));
        if (showPrivileges) {
            info.put("inheritedPrivileges", Privilege.toDocuments(roles.privileges(List.of(role))));
        }
        return info;
    }
}
