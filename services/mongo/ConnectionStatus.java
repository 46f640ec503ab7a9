import java.util.ArrayList;
import java.util.List;

import de.bwaldvogel.mongo.backend.Utils;
import de.bwaldvogel.mongo.bson.Document;

/**
 * connectionStatus as MongoDB answers it (commands/connection_status.cpp): {@code authInfo} with
 * {@code authenticatedUsers} ([{user, db}], at most one), {@code authenticatedUserRoles} (the
 * user's roles and every role they inherit) and, with {@code showPrivileges: true},
 * {@code authenticatedUserPrivileges}: the user's privileges merged, one per resource. No
 * authentication is needed to ask.
 */
final class ConnectionStatus {
    private ConnectionStatus() {
    }

    static Document reply(AuthSession session, Document query, Authorization authorization) {
        List<Document> users = new ArrayList<>();
        if (session.user() != null) {
            users.add(session.user().toDocument());
        }
        Document authInfo = new Document("authenticatedUsers", users)
            .append("authenticatedUserRoles", RoleName.toDocuments(authorization.rolesOf(session)));
        if (Utils.isTrue(query.get("showPrivileges"))) {
            authInfo.put("authenticatedUserPrivileges", Privilege.toDocuments(authorization.userPrivileges(session)));
        }
        return new Document("authInfo", authInfo).append("ok", 1.0);
    }
}
