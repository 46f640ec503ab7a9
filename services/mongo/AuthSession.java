import java.net.InetSocketAddress;
import java.net.SocketAddress;

import io.netty.channel.Channel;
import io.netty.util.AttributeKey;

/**
 * What one connection is authenticated as (MongoDB 6.0+: one user per connection) and its SCRAM
 * conversation in progress. Only the connection's own commands touch it, one at a time.
 */
final class AuthSession {
    private static final AttributeKey<AuthSession> KEY = AttributeKey.valueOf("authSession");

    private final boolean localhost;
    private volatile UserName user;
    private volatile ScramConversation conversation;

    private AuthSession(boolean localhost) {
        this.localhost = localhost;
    }

    /** The connection's session, made on its first command. */
    static AuthSession of(Channel channel) {
        if (channel == null) {
            return new AuthSession(false);
        }
        AuthSession fresh = new AuthSession(isLoopback(channel.remoteAddress()));
        AuthSession existing = channel.attr(KEY).setIfAbsent(fresh);
        return existing != null ? existing : fresh;
    }

    private static boolean isLoopback(SocketAddress address) {
        return address instanceof InetSocketAddress inet && inet.getAddress() != null
            && inet.getAddress().isLoopbackAddress();
    }

    boolean isLocalhost() {
        return localhost;
    }

    UserName user() {
        return user;
    }

    void logIn(UserName name) {
        user = name;
    }

    void logOut() {
        user = null;
    }

    ScramConversation conversation() {
        return conversation;
    }

    void converse(ScramConversation next) {
        conversation = next;
    }
}
