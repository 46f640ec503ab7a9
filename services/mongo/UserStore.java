import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.UUID;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * The users createUser defines, kept in memory with the layout of MongoDB's admin.system.users:
 * {@code {_id: "db.user", userId, user, db, credentials: {"SCRAM-SHA-1": {...}, "SCRAM-SHA-256":
 * {...}}, roles: [{role, db}], customData}}. Checks and error replies as
 * user_management_commands.cpp makes them; whether the roles exist is the caller's to check.
 */
final class UserStore {
    private static final List<String> MECHANISMS = List.of(ScramSecrets.SHA_1, ScramSecrets.SHA_256);

    private final Map<UserName, Document> users = new TreeMap<>(); // guarded by this

    synchronized boolean isEmpty() {
        return users.isEmpty();
    }

    synchronized boolean exists(UserName name) {
        return users.containsKey(name);
    }

    synchronized void create(UserName name, Object password, Object mechanisms, List<RoleName> roles,
                             Object customData) {
        if (name.db().equals("local")) {
            throw new MongoServerError(2, "BadValue", "Cannot create users in the local database");
        }
        if (name.user().indexOf('\0') >= 0) {
            throw new MongoServerError(2, "BadValue", "Username cannot contain NULL characters");
        }
        if (!(password instanceof String)) {
            throw new MongoServerError(2, "BadValue", "Must provide a 'pwd' field for all user documents, except those"
                + " with '$external' as the user's source db");
        }
        Document credentials = credentials(name, (String) password, mechanisms);
        if (users.containsKey(name)) {
            throw new MongoServerError(51003, "Location51003", "User \"" + name + "\" already exists");
        }
        Document user = new Document("_id", name.id()).append("userId", UUID.randomUUID())
            .append("user", name.user()).append("db", name.db()).append("credentials", credentials)
            .append("roles", RoleName.toDocuments(new LinkedHashSet<>(roles)));
        if (customData instanceof Document) {
            user.put("customData", customData);
        }
        users.put(name, user);
    }

    /** updateUser: a null argument leaves that part as it is. */
    synchronized void update(UserName name, Object password, Object mechanisms, List<RoleName> roles,
                             Object customData) {
        if (password == null && mechanisms == null && roles == null && customData == null) {
            throw new MongoServerError(2, "BadValue", "Must specify at least one field to update in updateUser");
        }
        Document user = users.get(name);
        if (user == null) {
            throw new MongoServerError(11, "UserNotFound", "User " + name + " not found");
        }
        if (password != null) {
            if (!(password instanceof String)) {
                throw new MongoServerError(14, "TypeMismatch", "\"pwd\" must be a string");
            }
            user.put("credentials", credentials(name, (String) password, mechanisms));
        } else if (mechanisms != null) {
            user.put("credentials", trimmed((Document) user.get("credentials"), mechanisms));
        }
        if (roles != null) {
            user.put("roles", RoleName.toDocuments(new LinkedHashSet<>(roles)));
        }
        if (customData instanceof Document) {
            user.put("customData", customData);
        }
    }

    synchronized void drop(UserName name) {
        if (users.remove(name) == null) {
            throw new MongoServerError(11, "UserNotFound", "User '" + name + "' not found");
        }
    }

    /** grantRolesToUser (grant) and revokeRolesFromUser. */
    synchronized void changeRoles(UserName name, List<RoleName> changed, boolean grant) {
        List<RoleName> current = roles(name);
        if (current == null) {
            throw new MongoServerError(11, "UserNotFound",
                "Could not find user \"" + name.user() + "\" for db \"" + name.db() + "\"");
        }
        Set<RoleName> roles = new LinkedHashSet<>(current);
        if (grant) {
            roles.addAll(changed);
        } else {
            changed.forEach(roles::remove);
        }
        users.get(name).put("roles", RoleName.toDocuments(roles));
    }

    /** dropRole takes the role away from every user holding it. */
    synchronized void forgetRole(RoleName role) {
        for (UserName name : users.keySet()) {
            List<RoleName> roles = new ArrayList<>(roles(name));
            if (roles.remove(role)) {
                users.get(name).put("roles", RoleName.toDocuments(roles));
            }
        }
    }

    /** The user's direct roles, or null when there is no such user. */
    synchronized List<RoleName> roles(UserName name) {
        Document user = users.get(name);
        if (user == null) {
            return null;
        }
        List<RoleName> roles = new ArrayList<>();
        for (Object role : (List<?>) user.get("roles")) {
            roles.add(RoleName.parse(role, name.db()));
        }
        return roles;
    }

    /** The stored credentials of one mechanism, or null (no such user or mechanism). */
    synchronized Document credentials(UserName name, String mechanism) {
        Document user = users.get(name);
        return user == null ? null : (Document) ((Document) user.get("credentials")).get(mechanism);
    }

    /** The user's mechanisms (for hello's saslSupportedMechs), or null when there is no such user. */
    synchronized List<String> mechanisms(UserName name) {
        Document user = users.get(name);
        return user == null ? null : new ArrayList<>(((Document) user.get("credentials")).keySet());
    }

    /** usersInfo's document of a user: the stored one, with mechanisms, credentials only if asked. */
    synchronized Document info(UserName name, boolean showCredentials) {
        Document user = users.get(name);
        if (user == null) {
            return null;
        }
        Document info = new Document("_id", user.get("_id")).append("userId", user.get("userId"))
            .append("user", name.user()).append("db", name.db())
            .append("mechanisms", mechanisms(name));
        info.putIfNotNull("customData", user.get("customData"));
        info.put("roles", user.get("roles"));
        if (showCredentials) {
            info.put("credentials", ((Document) user.get("credentials")).cloneDeeply());
        }
        return info;
    }

    synchronized List<UserName> names(String db) {
        return users.keySet().stream().filter(u -> db == null || u.db().equals(db)).toList();
    }

    /** buildCredentials: both SCRAM mechanisms unless {@code mechanisms} names some. */
    private static Document credentials(UserName name, String password, Object mechanisms) {
        Document credentials = new Document();
        for (String mechanism : chosen(mechanisms)) {
            credentials.put(mechanism, ScramSecrets.derive(mechanism, name.user(), password));
        }
        return credentials;
    }

    private static List<String> chosen(Object mechanisms) {
        if (mechanisms == null) {
            return MECHANISMS;
        }
        if (!(mechanisms instanceof List<?> list) || list.isEmpty()) {
            throw new MongoServerError(2, "BadValue", "mechanisms field must not be empty");
        }
        List<String> chosen = new ArrayList<>();
        for (Object mechanism : list) {
            if (!MECHANISMS.contains(mechanism)) {
                throw new MongoServerError(2, "BadValue", "Unknown auth mechanism '" + mechanism + "'");
            }
            chosen.add((String) mechanism);
        }
        return MECHANISMS.stream().filter(chosen::contains).toList();
    }

    /** trimCredentials: updateUser with mechanisms and no password keeps only those. */
    private static Document trimmed(Document credentials, Object mechanisms) {
        Document kept = new Document();
        for (String mechanism : chosen(mechanisms)) {
            if (!credentials.containsKey(mechanism)) {
                throw new MongoServerError(2, "BadValue", "mechanisms field must be a subset of previously set mechanisms");
            }
            kept.put(mechanism, credentials.get(mechanism));
        }
        return kept;
    }
}
