import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.util.Base64;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * The server's side of one SCRAM conversation (RFC 5802), as MongoDB's
 * sasl_scram_server_conversation runs it over saslStart and saslContinue:
 * client-first ({@code n,,n=USER,r=NONCE}) answered with {@code r=NONCE+OURS,s=SALT,i=N};
 * client-final ({@code c=biws,r=...,p=PROOF}) checked against the stored key and answered with
 * {@code v=SERVER_SIGNATURE}; then, unless the client asked for {@code skipEmptyExchange}, an
 * empty exchange to finish. Every failure is MongoDB's one reply to a failed authentication:
 * 18 AuthenticationFailed, "Authentication failed." (sasl_commands.cpp: doSaslStep).
 */
final class ScramConversation {
    private static final SecureRandom RANDOM = new SecureRandom();

    private final String mechanism;
    private final String db;
    private final UserStore users;
    private final boolean skipEmptyExchange;

    private UserName user;
    private Document credentials;
    private String gs2Header;
    private String clientFirstBare;
    private String serverFirst;
    private String nonce;
    private int step;
    private boolean done;

    ScramConversation(String mechanism, String db, UserStore users, boolean skipEmptyExchange) {
        this.mechanism = mechanism;
        this.db = db;
        this.users = users;
        this.skipEmptyExchange = skipEmptyExchange;
    }

    static AuthFailed failed() {
        return new AuthFailed();
    }

    /** The reply to the next client message. */
    byte[] step(byte[] payload) {
        String message = new String(payload, StandardCharsets.UTF_8);
        step++;
        return switch (step) {
            case 1 -> first(message);
            case 2 -> last(message);
            case 3 -> finish(message);
            default -> throw failed();
        };
    }

    boolean done() {
        return done;
    }

    UserName user() {
        return user;
    }

    private byte[] first(String message) {
        int bare = gs2Length(message);
        gs2Header = message.substring(0, bare);
        clientFirstBare = message.substring(bare);
        String[] parts = clientFirstBare.split(",", -1);
        if (parts.length < 2 || !parts[0].startsWith("n=") || !parts[1].startsWith("r=") || parts[1].length() < 3) {
            throw failed();
        }
        String name = parts[0].substring(2).replace("=2C", ",").replace("=3D", "=");
        String authzid = gs2Header.split(",", -1)[1];
        if (!authzid.isEmpty() && !authzid.equals("a=" + parts[0].substring(2))) {
            throw failed();
        }
        user = new UserName(name, db);
        credentials = users.credentials(user, mechanism);
        if (credentials == null) {
            throw failed(); // no such user, or no credentials of this mechanism
        }
        byte[] ours = new byte[24];
        RANDOM.nextBytes(ours);
        nonce = parts[1].substring(2) + Base64.getEncoder().encodeToString(ours);
        serverFirst = "r=" + nonce + ",s=" + credentials.get("salt") + ",i=" + credentials.get("iterationCount");
        return serverFirst.getBytes(StandardCharsets.UTF_8);
    }

    private static int gs2Length(String message) {
        if (!(message.startsWith("n,") || message.startsWith("y,"))) {
            throw failed(); // "p=": channel binding, which MongoDB does not offer either
        }
        int second = message.indexOf(',', 2);
        if (second < 0) {
            throw failed();
        }
        return second + 1;
    }

    private byte[] last(String message) {
        int proofAt = message.lastIndexOf(",p=");
        if (proofAt < 0) {
            throw failed();
        }
        String withoutProof = message.substring(0, proofAt);
        String expectedBinding = "c=" + Base64.getEncoder().encodeToString(gs2Header.getBytes(StandardCharsets.UTF_8));
        if (!withoutProof.equals(expectedBinding + ",r=" + nonce)) {
            throw failed();
        }
        byte[] proof;
        try {
            proof = Base64.getDecoder().decode(message.substring(proofAt + 3));
        } catch (IllegalArgumentException e) {
            throw failed();
        }
        Base64.Decoder base64 = Base64.getDecoder();
        byte[] storedKey = base64.decode((String) credentials.get("storedKey"));
        byte[] serverKey = base64.decode((String) credentials.get("serverKey"));
        byte[] authMessage = (clientFirstBare + "," + serverFirst + "," + withoutProof).getBytes(StandardCharsets.UTF_8);
        byte[] signature = ScramSecrets.hmac(mechanism, storedKey, authMessage);
        if (proof.length != signature.length) {
            throw failed();
        }
        byte[] clientKey = new byte[proof.length];
        for (int i = 0; i < proof.length; i++) {
            clientKey[i] = (byte) (proof[i] ^ signature[i]);
        }
        if (!MessageDigest.isEqual(ScramSecrets.hash(mechanism, clientKey), storedKey)) {
            throw failed();
        }
        done = skipEmptyExchange;
        String verifier = "v=" + Base64.getEncoder().encodeToString(ScramSecrets.hmac(mechanism, serverKey, authMessage));
        return verifier.getBytes(StandardCharsets.UTF_8);
    }

    private byte[] finish(String message) {
        if (done || !message.isEmpty()) {
            throw failed();
        }
        done = true;
        return new byte[0];
    }

    /** The one error a failed authentication answers with. */
    static final class AuthFailed extends MongoServerError {
        private static final long serialVersionUID = 1L;

        AuthFailed() {
            super(18, "AuthenticationFailed", "Authentication failed.");
        }
    }
}
