import java.util.ArrayDeque;
import java.util.Deque;
import java.util.Locale;
import java.util.Set;
import java.util.concurrent.TimeUnit;

import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;
import de.bwaldvogel.mongo.wire.message.MongoMessage;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInboundHandlerAdapter;

/**
 * Reads with {@code readConcern: {level: "majority", afterClusterTime: T}} (or "snapshot") wait,
 * as on a primary, until every write up to T is majority-committed: while an oplog hole at or
 * before T is open (see {@link OplogHole}), the majority commit point stays before the hole, and
 * the read is held back (without blocking the event loop) until the hole closes or its maxTimeMS
 * runs out; then it fails with 50 MaxTimeMSExpired, "operation exceeded time limit"
 * (src/mongo/db/read_concern_mongod.cpp waits for the committed snapshot to reach T; a primary
 * behind T writes a no-op first, so a T in the future waits only for the holes before it).
 *
 * <p>One instance per connection, in front of the library's handler; requests that arrive on the
 * connection meanwhile are handled after the held one, in order. A "local" or "available" read
 * with afterClusterTime waits for the last applied write, which is never behind here.
 */
final class CommittedReads extends ChannelInboundHandlerAdapter {
    private static final Set<String> READS = Set.of("find", "aggregate", "count", "distinct");
    private static final Set<String> COMMITTED_LEVELS = Set.of("majority", "snapshot");

    private final ChangeStreamOplog history;

    // only touched on the connection's event loop
    private MongoMessage held;
    private long until; // the afterClusterTime of the held read
    private long deadlineNanos; // Long.MAX_VALUE: no maxTimeMS
    private long generation;
    private Runnable waiter;
    private final Deque<Object> queued = new ArrayDeque<>();

    CommittedReads(ChangeStreamOplog history) {
        this.history = history;
    }

    /** Fails the read with 50 MaxTimeMSExpired when the writes up to its afterClusterTime are not committed yet. */
    static void check(String command, Document query, ChangeStreamOplog history) {
        BsonTimestamp after = afterClusterTime(command, query);
        if (after != null && history != null && !history.committedThrough(after.getValue())) {
            throw new MongoServerError(50, "MaxTimeMSExpired", "operation exceeded time limit");
        }
    }

    @Override
    public void channelRead(ChannelHandlerContext ctx, Object message) {
        if (held != null) {
            queued.add(message);
            return;
        }
        Document document = message instanceof MongoMessage m ? m.getDocument() : null;
        BsonTimestamp after = document == null || document.isEmpty() ? null
            : afterClusterTime(document.keySet().iterator().next(), document);
        if (after == null || history.committedThrough(after.getValue())) {
            ctx.fireChannelRead(message);
            return;
        }
        held = (MongoMessage) message;
        until = after.getValue();
        long mine = ++generation;
        if (document.get("maxTimeMS") instanceof Number max && max.longValue() > 0) {
            deadlineNanos = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(max.longValue());
            ctx.executor().schedule(() -> poll(ctx, mine), max.longValue(), TimeUnit.MILLISECONDS);
        } else {
            deadlineNanos = Long.MAX_VALUE;
        }
        waitForWrite(ctx, mine);
    }

    private void waitForWrite(ChannelHandlerContext ctx, long which) {
        waiter = () -> ctx.executor().execute(() -> poll(ctx, which));
        history.onNextWrite(waiter);
        if (history.committedThrough(until)) { // the hole closed before the waiter was registered
            ctx.executor().execute(() -> poll(ctx, which));
        }
    }

    private void poll(ChannelHandlerContext ctx, long which) {
        if (held == null || which != generation || !ctx.channel().isActive()) {
            return;
        }
        boolean due = deadlineNanos != Long.MAX_VALUE && System.nanoTime() - deadlineNanos >= 0;
        if (!due && !history.committedThrough(until)) {
            history.cancelWaiter(waiter); // a waiter runs once: this one may have run already
            waitForWrite(ctx, which);
            return;
        }
        MongoMessage message = held;
        release();
        ctx.fireChannelRead(message); // past its deadline, the backend's check fails it with 50
        while (held == null && !queued.isEmpty()) {
            channelRead(ctx, queued.poll());
        }
    }

    private void release() {
        held = null;
        generation++;
        if (waiter != null) {
            history.cancelWaiter(waiter);
            waiter = null;
        }
    }

    @Override
    public void channelInactive(ChannelHandlerContext ctx) throws Exception {
        release();
        queued.clear();
        super.channelInactive(ctx);
    }

    /** The afterClusterTime of a read that must see every write up to it committed, or null. */
    private static BsonTimestamp afterClusterTime(String command, Document query) {
        if (!READS.contains(command.toLowerCase(Locale.ROOT)) || !(query.get("readConcern") instanceof Document concern)
            || !(concern.get("afterClusterTime") instanceof BsonTimestamp after)
            || !COMMITTED_LEVELS.contains(String.valueOf(concern.get("level")))) {
            return null;
        }
        return after;
    }
}
