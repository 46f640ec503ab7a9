import java.util.List;

import de.bwaldvogel.mongo.backend.Utils;
import de.bwaldvogel.mongo.bson.BinData;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * Authentication as MongoDB answers the drivers (sasl_commands.cpp, the hello command):
 * saslStart and saslContinue carry a SCRAM-SHA-1 or SCRAM-SHA-256 conversation
 * ({@code {conversationId: 1, done, payload}}); hello answers {@code saslSupportedMechs: "db.user"}
 * with the user's mechanisms and runs a {@code speculativeAuthenticate} saslStart, dropped
 * silently when it fails as MongoDB drops it; logout forgets the user. A connection holds one
 * user (MongoDB 6.0+).
 */
final class Authentication {
    private final UserStore users;

    Authentication(UserStore users) {
        this.users = users;
    }

    Document saslStart(AuthSession session, String db, Document query) {
        session.converse(null);
        Object mechanism = query.get("mechanism");
        if (!ScramSecrets.SHA_1.equals(mechanism) && !ScramSecrets.SHA_256.equals(mechanism)) {
            throw new MongoServerError(334, "MechanismUnavailable",
                "Received authentication for mechanism " + mechanism + " which is unknown or not enabled");
        }
        boolean skipEmptyExchange = query.get("options") instanceof Document options
            && Utils.isTrue(options.get("skipEmptyExchange"));
        ScramConversation conversation = new ScramConversation((String) mechanism, db, users, skipEmptyExchange);
        session.converse(conversation);
        return step(session, conversation, query.get("payload"));
    }

    Document saslContinue(AuthSession session, Document query) {
        ScramConversation conversation = session.conversation();
        if (conversation == null) {
            throw new MongoServerError(17, "ProtocolError", "No SASL session state found");
        }
        if (!(query.get("conversationId") instanceof Number id) || id.intValue() != 1) {
            throw new MongoServerError(17, "ProtocolError", "sasl: Mismatched conversation id");
        }
        return step(session, conversation, query.get("payload"));
    }

    /** logout: forgets the user if it authenticated on this database. */
    Document logout(AuthSession session, String db) {
        UserName user = session.user();
        if (user != null && user.db().equals(db)) {
            session.logOut();
        }
        return new Document("ok", 1.0);
    }

    /** hello's answers for a client about to authenticate. */
    void addToHello(AuthSession session, Document query, Document reply) {
        if (query.get("saslSupportedMechs") instanceof String qualified && qualified.indexOf('.') > 0) {
            int dot = qualified.indexOf('.');
            UserName user = new UserName(qualified.substring(dot + 1), qualified.substring(0, dot));
            List<String> mechanisms = users.mechanisms(user);
            if (mechanisms != null) {
                reply.put("saslSupportedMechs", mechanisms);
            }
        }
        if (query.get("speculativeAuthenticate") instanceof Document start && start.get("db") instanceof String db
            && start.containsKey("saslStart")) {
            try {
                reply.put("speculativeAuthenticate", saslStart(session, db, start));
            } catch (MongoServerError e) {
                session.converse(null); // as if no speculative start had come
            }
        }
    }

    private Document step(AuthSession session, ScramConversation conversation, Object payload) {
        byte[] bytes;
        if (payload instanceof BinData binary) {
            bytes = binary.getData();
        } else if (payload instanceof byte[] raw) {
            bytes = raw;
        } else {
            throw new MongoServerError(2, "BadValue", "saslStart and saslContinue need a binary payload");
        }
        byte[] answer;
        try {
            answer = conversation.step(bytes);
        } catch (MongoServerError e) {
            session.converse(null);
            throw ScramConversation.failed();
        }
        if (conversation.done()) {
            session.converse(null);
            logIn(session, conversation.user());
        }
        return new Document("conversationId", 1).append("done", conversation.done())
            .append("payload", new BinData(answer)).append("ok", 1.0);
    }

    /** addAndAuthorizeUser: the same user again is fine; another one is refused. */
    private static void logIn(AuthSession session, UserName user) {
        UserName previous = session.user();
        if (previous != null && !previous.equals(user)) {
            if (previous.db().equals(user.db())) {
                throw new MongoServerError(5626701, "Location5626701",
                    "Each client connection may only be authenticated once. Previously authenticated as: " + previous);
            }
            throw new MongoServerError(5626702, "Location5626702",
                "Client has attempted to authenticate on multiple databases.Already authenticated as: " + previous);
        }
        session.logIn(user);
    }
}
