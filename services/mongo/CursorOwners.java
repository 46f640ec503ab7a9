import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerException;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * Who opened each cursor, and on what privileges, so that only its user may continue it
 * (getmore_cmd.cpp: "cursor id N was not created by the authenticated user"; then "not
 * authorized for getMore with cursor id N" when the user lost the privileges it was opened
 * with) or kill it without killAnyCursor (authorization_checks.cpp: checkAuthForKillCursors).
 */
final class CursorOwners {
    private record Owner(UserName user, List<Privilege> privileges) {
    }

    private static final int PRUNE_AT = 10_000;

    private final Map<Long, Owner> owners = new ConcurrentHashMap<>();
    private final CursorRegistry registry;

    CursorOwners(CursorRegistry registry) {
        this.registry = registry;
    }

    /** Notes the cursor a reply opened (or drops it when the reply ended it). */
    void afterReply(String command, Document query, Document reply, AuthSession session, List<Privilege> privileges) {
        if (command.equalsIgnoreCase("killCursors") && query.get("cursors") instanceof List<?> ids) {
            ids.forEach(id -> owners.remove(((Number) id).longValue()));
            return;
        }
        if (reply == null || !(reply.get("cursor") instanceof Document cursor) || !(cursor.get("id") instanceof Number id)) {
            return;
        }
        if (command.equalsIgnoreCase("getMore")) {
            if (id.longValue() == 0 && query.get("getMore") instanceof Number closed) {
                owners.remove(closed.longValue());
            }
        } else if (id.longValue() != 0 && session.user() != null) {
            if (owners.size() >= PRUNE_AT) {
                owners.keySet().removeIf(this::gone);
            }
            owners.put(id.longValue(), new Owner(session.user(), privileges));
        }
    }

    /** getMore: only the cursor's user, still holding what opened it. */
    void checkGetMore(AuthSession session, Document query, Authorization authorization) {
        if (!(query.get("getMore") instanceof Number id)) {
            return;
        }
        Owner owner = owners.get(id.longValue());
        if (owner == null) {
            return; // not one of ours: the library answers CursorNotFound
        }
        if (!owner.user().equals(session.user())) {
            throw new MongoServerError(13, "Unauthorized", "cursor id " + id + " was not created by the authenticated user");
        }
        if (!authorization.holds(session, owner.privileges())) {
            throw new MongoServerError(13, "Unauthorized", "not authorized for getMore with cursor id " + id);
        }
    }

    /** killCursors: one's own cursors, or killAnyCursor on the cluster or the namespace. */
    void checkKill(AuthSession session, String db, Document query, Authorization authorization) {
        if (!(query.get("cursors") instanceof List<?> ids)) {
            return;
        }
        ResourcePattern namespace = ResourcePattern.namespace(db, String.valueOf(query.get("killCursors")));
        for (Object id : ids) {
            Owner owner = id instanceof Number number ? owners.get(number.longValue()) : null;
            if (owner == null || owner.user().equals(session.user())) {
                continue; // unknown cursors are reported by the command, not refused
            }
            boolean killsAny = authorization.holds(session,
                    List.of(Privilege.of(ResourcePattern.cluster(), "killAnyCursor")))
                || authorization.holds(session, List.of(Privilege.of(namespace, "killAnyCursor")));
            if (!killsAny) {
                throw Authorization.notAuthorized(db, query);
            }
        }
    }

    private boolean gone(long id) {
        try {
            registry.getCursor(id);
            return false;
        } catch (MongoServerException e) {
            return true;
        }
    }
}
