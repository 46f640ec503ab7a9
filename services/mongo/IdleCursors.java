import java.util.List;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentMap;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.backend.Utils;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.wire.MongoDatabaseHandler;
import de.bwaldvogel.mongo.wire.message.MongoMessage;
import io.netty.channel.Channel;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInboundHandlerAdapter;
import io.netty.util.AttributeKey;

/**
 * MongoDB's idle-cursor timeout: a cursor not used by a getMore for {@code cursorTimeoutMillis}
 * (server parameter, default 600000 ms, set at run time with {@code setParameter} or at start
 * with {@code -DcursorTimeoutMillis=N}) is killed, and a later getMore fails with 43
 * CursorNotFound. Cursors opened with {@code noCursorTimeout} are kept. A cursor counts as in use
 * from the moment its getMore arrives (a change stream getMore held back for awaitData included)
 * until the reply; {@code serverStatus} reports {@code metrics.cursor.timedOut} and
 * {@code open.noTimeout}, as MongoDB does.
 */
final class IdleCursors {
    static final long DEFAULT_TIMEOUT_MS = 600_000;
    /** How often idle cursors are looked for; MongoDB's clientCursorMonitorFrequencySecs is 4 s. */
    private static final long REAP_EVERY_MS = 100;

    private final CursorRegistry registry;
    private final ConcurrentMap<Long, Tracked> open = new ConcurrentHashMap<>();
    private final AtomicLong timedOut = new AtomicLong();
    private volatile long timeoutMillis;

    private static final class Tracked {
        final boolean noTimeout;
        volatile long lastUsedNanos = System.nanoTime();
        volatile Channel busy; // the connection whose getMore is in flight, or null

        Tracked(boolean noTimeout) {
            this.noTimeout = noTimeout;
        }
    }

    IdleCursors(CursorRegistry registry, long timeoutMillis) {
        this.registry = registry;
        setTimeoutMillis(timeoutMillis);
        ScheduledExecutorService reaper = Executors.newSingleThreadScheduledExecutor(task -> {
            Thread thread = new Thread(task, "idle-cursor-reaper");
            thread.setDaemon(true);
            return thread;
        });
        reaper.scheduleWithFixedDelay(this::reap, REAP_EVERY_MS, REAP_EVERY_MS, TimeUnit.MILLISECONDS);
    }

    long timeoutMillis() {
        return timeoutMillis;
    }

    void setTimeoutMillis(long millis) {
        if (millis <= 0) {
            throw new IllegalArgumentException("cursorTimeoutMillis must be positive");
        }
        timeoutMillis = millis;
    }

    /** After a command: start tracking the cursor its reply opened, if any. */
    void afterCommand(String command, Document query, Document reply) {
        if (command.equalsIgnoreCase("getMore")) {
            finished(query.get("getMore"), reply);
        } else if (command.equalsIgnoreCase("killCursors") && query.get("cursors") instanceof List<?> ids) {
            for (Object id : ids) {
                if (id instanceof Number number) {
                    open.remove(number.longValue());
                }
            }
        } else {
            long id = cursorId(reply);
            if (id != 0) {
                open.put(id, new Tracked(Utils.isTrue(query.get("noCursorTimeout"))));
            }
        }
    }

    /** A getMore arrived on {@code channel}: kill its cursor if it idled too long, else mark it busy. */
    void arrived(Object cursorId, Channel channel) {
        Tracked tracked = cursorId instanceof Number number ? open.get(number.longValue()) : null;
        if (tracked == null) {
            return;
        }
        if (expired(tracked, System.nanoTime())) {
            kill(((Number) cursorId).longValue());
        } else {
            tracked.busy = channel;
        }
    }

    private void finished(Object cursorId, Document reply) {
        if (!(cursorId instanceof Number number)) {
            return;
        }
        long id = number.longValue();
        Tracked tracked = open.get(id);
        if (tracked == null) {
            return;
        }
        if (reply == null || !(reply.get("cursor") instanceof Document) || cursorId(reply) == 0) {
            open.remove(id); // exhausted, closed or failed: the registry no longer has it
            return;
        }
        tracked.lastUsedNanos = System.nanoTime();
        tracked.busy = null;
    }

    long timedOut() {
        return timedOut.get();
    }

    long openNoTimeout() {
        return open.values().stream().filter(t -> t.noTimeout).count();
    }

    private boolean expired(Tracked tracked, long now) {
        return !tracked.noTimeout && tracked.busy == null
            && now - tracked.lastUsedNanos > TimeUnit.MILLISECONDS.toNanos(timeoutMillis);
    }

    private void reap() {
        long now = System.nanoTime();
        open.forEach((id, tracked) -> {
            Channel busy = tracked.busy;
            if (busy != null && !busy.isActive()) { // its connection went away mid-getMore
                tracked.busy = null;
                tracked.lastUsedNanos = now;
            }
            if (expired(tracked, now)) {
                kill(id);
            }
        });
    }

    private void kill(long id) {
        if (open.remove(id) != null && registry.remove(id)) {
            timedOut.incrementAndGet();
        }
    }

    private static long cursorId(Document reply) {
        if (reply != null && reply.get("cursor") instanceof Document cursor && cursor.get("id") instanceof Number id) {
            return id.longValue();
        }
        return 0;
    }

    private static final AttributeKey<Boolean> INSTALLED = AttributeKey.valueOf("idleCursors");

    /** Puts the getMore watcher in front of everything else on the connection, once. */
    void install(Channel channel) {
        if (channel == null || channel.attr(INSTALLED).setIfAbsent(Boolean.TRUE) != null) {
            return;
        }
        ChannelHandlerContext handler = channel.pipeline().context(MongoDatabaseHandler.class);
        if (handler != null) {
            channel.pipeline().addBefore(handler.name(), "idleCursors", new GetMoreWatcher());
        }
    }

    /** Sees each getMore when it arrives, before awaitData may hold it back. */
    private final class GetMoreWatcher extends ChannelInboundHandlerAdapter {
        @Override
        public void channelRead(ChannelHandlerContext ctx, Object message) {
            if (message instanceof MongoMessage mongoMessage) {
                Document document = mongoMessage.getDocument();
                if (document != null && !document.isEmpty()
                    && document.keySet().iterator().next().equalsIgnoreCase("getMore")) {
                    arrived(document.get("getMore"), ctx.channel());
                }
            }
            ctx.fireChannelRead(message);
        }
    }
}
