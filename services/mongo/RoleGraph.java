import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Deque;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * The roles: the built-in ones ({@link BuiltinRoles}) and those createRole defines, kept in
 * memory with the layout of MongoDB's admin.system.roles ({@code {_id: "db.role", role, db,
 * privileges, roles}}), and what a set of roles grants once their inherited roles are followed.
 * Checks and error replies as user_management_commands.cpp makes them.
 */
final class RoleGraph {
    private record Defined(RoleName name, List<Privilege> privileges, List<RoleName> roles) {
    }

    private final Map<RoleName, Defined> defined = new TreeMap<>(); // guarded by this

    synchronized boolean isEmpty() {
        return defined.isEmpty();
    }

    synchronized boolean exists(RoleName role) {
        return BuiltinRoles.exists(role) || defined.containsKey(role);
    }

    static boolean isBuiltin(RoleName role) {
        return BuiltinRoles.exists(role);
    }

    /** Fails with 31 RoleNotFound naming the first role that does not exist. */
    synchronized void checkExist(Collection<RoleName> roles) {
        for (RoleName role : roles) {
            if (!exists(role)) {
                throw new MongoServerError(31, "RoleNotFound", "No role named " + role);
            }
        }
    }

    synchronized List<RoleName> directRoles(RoleName role) {
        Defined own = defined.get(role);
        return own != null ? own.roles() : BuiltinRoles.roles(role);
    }

    synchronized List<Privilege> directPrivileges(RoleName role) {
        Defined own = defined.get(role);
        return own != null ? own.privileges() : BuiltinRoles.privileges(role);
    }

    /** The given roles and every role they inherit, each once, in the order met. */
    synchronized Set<RoleName> closure(Collection<RoleName> roles) {
        Set<RoleName> seen = new LinkedHashSet<>();
        Deque<RoleName> pending = new ArrayDeque<>(roles);
        while (!pending.isEmpty()) {
            RoleName role = pending.poll();
            if (exists(role) && seen.add(role)) {
                pending.addAll(directRoles(role));
            }
        }
        return seen;
    }

    /** The roles {@code role} inherits, itself excluded. */
    synchronized Set<RoleName> inherited(RoleName role) {
        Set<RoleName> all = closure(directRoles(role));
        all.remove(role);
        return all;
    }

    /** Every privilege the roles grant, theirs and their inherited roles', unmerged. */
    synchronized List<Privilege> privileges(Collection<RoleName> roles) {
        List<Privilege> privileges = new ArrayList<>();
        for (RoleName role : closure(roles)) {
            privileges.addAll(directPrivileges(role));
        }
        return privileges;
    }

    synchronized void create(RoleName role, List<Privilege> privileges, List<RoleName> roles) {
        if (role.role().isEmpty()) {
            throw new MongoServerError(2, "BadValue", "Role name must be non-empty");
        }
        if (role.db().equals("local")) {
            throw new MongoServerError(2, "BadValue", "Cannot create roles in the local database");
        }
        if (role.db().equals("$external")) {
            throw new MongoServerError(2, "BadValue", "Cannot create roles in the $external database");
        }
        if (isBuiltin(role)) {
            throw new MongoServerError(2, "BadValue", "Cannot create roles with the same name as a built-in role");
        }
        checkGrants(role, roles, privileges);
        if (defined.containsKey(role)) {
            throw new MongoServerError(51002, "Location51002", "Role \"" + role + "\" already exists");
        }
        defined.put(role, new Defined(role, Privilege.merge(privileges), List.copyOf(new LinkedHashSet<>(roles))));
    }

    /** updateRole: null leaves that part as it is. */
    synchronized void update(RoleName role, List<Privilege> privileges, List<RoleName> roles) {
        if (privileges == null && roles == null) {
            throw new MongoServerError(2, "BadValue", "Must specify at least one field to update in updateRole");
        }
        checkExist(List.of(role));
        if (isBuiltin(role)) {
            throw new MongoServerError(2, "BadValue", role + " is a built-in role and cannot be modified");
        }
        checkGrants(role, roles == null ? List.of() : roles, privileges == null ? List.of() : privileges);
        Defined old = defined.get(role);
        defined.put(role, new Defined(role,
            privileges == null ? old.privileges() : Privilege.merge(privileges),
            roles == null ? old.roles() : List.copyOf(new LinkedHashSet<>(roles))));
    }

    /** dropRole: removes the role and takes it out of every role that inherits it. */
    synchronized void drop(RoleName role) {
        if (isBuiltin(role)) {
            throw new MongoServerError(2, "BadValue", role + " is a built-in role and cannot be modified");
        }
        checkExist(List.of(role));
        defined.remove(role);
        defined.replaceAll((name, other) -> other.roles().contains(role)
            ? new Defined(name, other.privileges(), other.roles().stream().filter(r -> !r.equals(role)).toList())
            : other);
    }

    /** The stored document of a role createRole defined (null for a built-in or unknown one). */
    synchronized Document storedDocument(RoleName role) {
        Defined own = defined.get(role);
        if (own == null) {
            return null;
        }
        return new Document("_id", role.db() + "." + role.role()).append("role", role.role()).append("db", role.db())
            .append("privileges", Privilege.toDocuments(own.privileges()))
            .append("roles", RoleName.toDocuments(own.roles()));
    }

    synchronized List<RoleName> definedOn(String db) {
        return defined.keySet().stream().filter(r -> r.db().equals(db)).toList();
    }

    /** checkOkayToGrantRolesToRole and checkOkayToGrantPrivilegesToRole (user_management_commands.cpp). */
    private void checkGrants(RoleName role, List<RoleName> roles, List<Privilege> privileges) {
        for (RoleName granted : roles) {
            if (granted.equals(role)) {
                throw new MongoServerError(49, "InvalidRoleModification", "Cannot grant role " + role + " to itself.");
            }
            if (!role.db().equals("admin") && !granted.db().equals(role.db())) {
                throw new MongoServerError(49, "InvalidRoleModification", "Roles on the '" + role.db()
                    + "' database cannot be granted roles from other databases");
            }
        }
        checkExist(roles);
        if (closure(roles).contains(role)) {
            throw new MongoServerError(49, "InvalidRoleModification",
                "Granting roles to " + role + " would introduce a cycle in the role graph");
        }
        if (!role.db().equals("admin")) {
            for (Privilege privilege : privileges) {
                if (!privilege.resource().isWithin(role.db())) {
                    throw new MongoServerError(49, "InvalidRoleModification", "Roles on the '" + role.db()
                        + "' database cannot be granted privileges that target other databases or the cluster");
                }
            }
        }
    }
}
