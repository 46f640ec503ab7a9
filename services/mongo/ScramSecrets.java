import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.text.Normalizer;
import java.util.Base64;

import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

import de.bwaldvogel.mongo.bson.Document;

/**
 * SCRAM (RFC 5802, RFC 7677) as MongoDB keeps it: a user's credentials per mechanism,
 * {@code {iterationCount, salt, storedKey, serverKey}} in base64, derived with MongoDB's
 * defaults (SCRAM-SHA-1: 10,000 iterations of a 16-byte salt, over the hex MD5 of
 * {@code user:mongo:password}; SCRAM-SHA-256: 15,000 iterations of a 28-byte salt, over the
 * SASLprep'd password), and the HMAC and hash both sides compute.
 */
final class ScramSecrets {
    static final String SHA_1 = "SCRAM-SHA-1";
    static final String SHA_256 = "SCRAM-SHA-256";

    private static final SecureRandom RANDOM = new SecureRandom();

    private ScramSecrets() {
    }

    /** The stored credentials of {@code mechanism} for a user's password. */
    static Document derive(String mechanism, String user, String password) {
        boolean sha1 = mechanism.equals(SHA_1);
        int iterations = sha1 ? 10_000 : 15_000;
        byte[] salt = new byte[sha1 ? 16 : 28];
        RANDOM.nextBytes(salt);
        byte[] salted = saltedPassword(mechanism, user, password, salt, iterations);
        byte[] clientKey = hmac(mechanism, salted, "Client Key");
        byte[] serverKey = hmac(mechanism, salted, "Server Key");
        Base64.Encoder base64 = Base64.getEncoder();
        return new Document("iterationCount", iterations).append("salt", base64.encodeToString(salt))
            .append("storedKey", base64.encodeToString(hash(mechanism, clientKey)))
            .append("serverKey", base64.encodeToString(serverKey));
    }

    static byte[] saltedPassword(String mechanism, String user, String password, byte[] salt, int iterations) {
        String secret = mechanism.equals(SHA_1) ? md5Hex(user + ":mongo:" + password) : saslPrep(password);
        return pbkdf2(mechanism, secret.getBytes(StandardCharsets.UTF_8), salt, iterations);
    }

    static byte[] hmac(String mechanism, byte[] key, String message) {
        return hmac(mechanism, key, message.getBytes(StandardCharsets.UTF_8));
    }

    static byte[] hmac(String mechanism, byte[] key, byte[] message) {
        try {
            String algorithm = mechanism.equals(SHA_1) ? "HmacSHA1" : "HmacSHA256";
            Mac mac = Mac.getInstance(algorithm);
            mac.init(new SecretKeySpec(key, algorithm));
            return mac.doFinal(message);
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException(e);
        }
    }

    static byte[] hash(String mechanism, byte[] data) {
        try {
            return MessageDigest.getInstance(mechanism.equals(SHA_1) ? "SHA-1" : "SHA-256").digest(data);
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException(e);
        }
    }

    /** PBKDF2 for one block of output (the hash's length), as SCRAM's Hi(). */
    private static byte[] pbkdf2(String mechanism, byte[] password, byte[] salt, int iterations) {
        byte[] first = new byte[salt.length + 4];
        System.arraycopy(salt, 0, first, 0, salt.length);
        first[first.length - 1] = 1; // INT(1)
        byte[] u = hmac(mechanism, password, first);
        byte[] result = u.clone();
        for (int i = 1; i < iterations; i++) {
            u = hmac(mechanism, password, u);
            for (int j = 0; j < result.length; j++) {
                result[j] ^= u[j];
            }
        }
        return result;
    }

    private static String md5Hex(String text) {
        try {
            byte[] digest = MessageDigest.getInstance("MD5").digest(text.getBytes(StandardCharsets.UTF_8));
            StringBuilder hex = new StringBuilder();
            for (byte b : digest) {
                hex.append(String.format("%02x", b));
            }
            return hex.toString();
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException(e);
        }
    }

    /**
     * SASLprep (RFC 4013) as far as its mappings go: non-ASCII spaces become a space, characters
     * "commonly mapped to nothing" go, then NFKC. Its prohibited-output and bidi checks are not
     * made (see docs/testing.md).
     */
    static String saslPrep(String text) {
        StringBuilder mapped = new StringBuilder();
        text.codePoints().forEach(c -> {
            if (Character.isSpaceChar(c) && c != ' ') {
                mapped.append(' ');
            } else if (c != 0x00AD && c != 0x034F && c != 0x1806 && !(c >= 0x180B && c <= 0x180D)
                && !(c >= 0x200B && c <= 0x200D) && c != 0x2060 && !(c >= 0xFE00 && c <= 0xFE0F) && c != 0xFEFF) {
                mapped.appendCodePoint(c);
            }
        });
        return Normalizer.normalize(mapped, Normalizer.Form.NFKC);
    }
}
