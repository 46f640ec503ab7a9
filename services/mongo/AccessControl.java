import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.function.Supplier;

import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.bson.Document;
import io.netty.channel.Channel;

/**
 * Access control for a server started with {@code -Dauth=true} (mongod's {@code --auth}): the
 * users and roles, authentication, and the check of every command against the privileges of
 * the connection's user before it runs. Wires the pieces; each does one job.
 */
final class AccessControl {
    private final UserStore users = new UserStore();
    private final RoleGraph roles = new RoleGraph();
    private final Authorization authorization = new Authorization(users, roles);
    private final Authentication authentication = new Authentication(users);
    private final UserCommands userCommands = new UserCommands(users, roles, authorization);
    private final RoleCommands roleCommands = new RoleCommands(users, roles, authorization);
    private final CursorOwners cursors;

    AccessControl(CursorRegistry registry) {
        this.cursors = new CursorOwners(registry);
    }

    /** Runs one command of the connection: its own commands here, any other through {@code next} once allowed. */
    Document handle(Channel channel, String db, String command, Document query, Supplier<Document> next) {
        AuthSession session = AuthSession.of(channel);
        authorization.refresh(session);
        String name = command.toLowerCase(Locale.ROOT);
        switch (name) {
            case "saslstart" -> {
                return authentication.saslStart(session, db, query);
            }
            case "saslcontinue" -> {
                return authentication.saslContinue(session, query);
            }
            case "logout" -> {
                return authentication.logout(session, db);
            }
            case "connectionstatus" -> {
                return ConnectionStatus.reply(session, query, authorization);
            }
            default -> {
                // every other command is checked first
            }
        }
        List<Privilege> allowed = authorization.check(session, db, command, query, CommandPrivileges.of(db, command, query));
        if (UserCommands.handles(command)) {
            return userCommands.handle(session, db, command, query);
        } else if (RoleCommands.handles(command)) {
            return roleCommands.handle(session, db, command, query);
        } else if (name.equals("getmore")) {
            cursors.checkGetMore(session, query, authorization);
        } else if (name.equals("killcursors")) {
            cursors.checkKill(session, db, query, authorization);
        }
        Document reply = next.get();
        if (name.equals("hello") || name.equals("ismaster")) {
            authentication.addToHello(session, query, reply);
        } else if (name.equals("listdatabases")) {
            onlyReachable(session, reply);
        }
        cursors.afterReply(command, query, reply, session, allowed);
        return reply;
    }

    /** listDatabases without the listDatabases action lists the databases one has privileges in. */
    private void onlyReachable(AuthSession session, Document reply) {
        boolean all = authorization.holds(session, List.of(Privilege.of(ResourcePattern.cluster(), "listDatabases")));
        if (all || reply == null || !(reply.get("databases") instanceof List<?> databases)) {
            return;
        }
        List<Object> shown = new ArrayList<>();
        for (Object database : databases) {
            if (database instanceof Document d && d.get("name") instanceof String db && authorization.reaches(session, db)) {
                shown.add(database);
            }
        }
        reply.put("databases", shown);
    }
}
