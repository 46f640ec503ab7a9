import java.util.ArrayDeque;
import java.util.Deque;
import java.util.concurrent.TimeUnit;

import de.bwaldvogel.mongo.backend.Cursor;
import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerException;
import de.bwaldvogel.mongo.wire.message.MongoMessage;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInboundHandlerAdapter;

/**
 * awaitData for change streams: a getMore on a change stream cursor with nothing new is held back
 * (without blocking the event loop) until an event that passes the stream's stages arrives or its
 * maxTimeMS (MongoDB's maxAwaitTimeMS, 1000 ms when absent) runs out, then handled as usual;
 * events the stages drop are passed over meanwhile, as MongoDB does. One instance per
 * connection, placed in front of the library's MongoDatabaseHandler; requests that arrive on the
 * connection meanwhile are handled after the held one, in order.
 */
final class ChangeStreamAwait extends ChannelInboundHandlerAdapter {

    static final long DEFAULT_AWAIT_MS = 1000;

    private final ChangeStreamOplog history;
    private final CursorRegistry cursors;

    // only touched on the connection's event loop
    private MongoMessage held;
    private ChangeStreamOplog.StreamCursor heldCursor;
    private long deadlineNanos;
    private long generation;
    private Runnable waiter; // registered with the history while a getMore is held
    private final Deque<Object> queued = new ArrayDeque<>();

    ChangeStreamAwait(ChangeStreamOplog history, CursorRegistry cursors) {
        this.history = history;
        this.cursors = cursors;
    }

    @Override
    public void channelRead(ChannelHandlerContext ctx, Object message) {
        if (held != null) {
            queued.add(message);
            return;
        }
        ChangeStreamOplog.StreamCursor cursor = awaitableCursor(message);
        long awaitMs = cursor == null ? 0 : awaitMillis(((MongoMessage) message).getDocument());
        if (awaitMs <= 0 || cursor.hasDeliverable()) {
            ctx.fireChannelRead(message);
            return;
        }
        held = (MongoMessage) message;
        heldCursor = cursor;
        deadlineNanos = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(awaitMs);
        long mine = ++generation;
        ctx.executor().schedule(() -> poll(ctx, mine), awaitMs, TimeUnit.MILLISECONDS);
        waitForWrite(ctx, mine);
        if (cursor.mayHaveEvents()) { // an event may have come before we registered (poll decides)
            poll(ctx, mine);
        }
    }

    private void waitForWrite(ChannelHandlerContext ctx, long which) {
        waiter = () -> ctx.executor().execute(() -> poll(ctx, which));
        history.onNextWrite(waiter);
    }

    private void release() {
        held = null;
        heldCursor = null;
        generation++;
        if (waiter != null) {
            history.cancelWaiter(waiter);
            waiter = null;
        }
    }

    private void poll(ChannelHandlerContext ctx, long which) {
        if (held == null || which != generation || !ctx.channel().isActive()) {
            return;
        }
        boolean due = System.nanoTime() - deadlineNanos >= 0;
        if (!due && !heldCursor.isEmpty() && stillRegistered() && !heldCursor.hasDeliverable()) {
            waitForWrite(ctx, which);
            return;
        }
        MongoMessage message = held;
        release();
        ctx.fireChannelRead(message);
        while (held == null && !queued.isEmpty()) {
            channelRead(ctx, queued.poll());
        }
    }

    private boolean stillRegistered() {
        try {
            return cursors.getCursor(heldCursor.getId()) == heldCursor;
        } catch (MongoServerException e) {
            return false; // killed meanwhile: let the getMore report it
        }
    }

    @Override
    public void channelInactive(ChannelHandlerContext ctx) throws Exception {
        release();
        queued.clear();
        super.channelInactive(ctx);
    }

    /** The change stream cursor of a getMore, or null for anything else. */
    private ChangeStreamOplog.StreamCursor awaitableCursor(Object message) {
        if (!(message instanceof MongoMessage)) {
            return null;
        }
        Document document = ((MongoMessage) message).getDocument();
        if (document == null || document.isEmpty()
            || !document.keySet().iterator().next().equalsIgnoreCase("getMore")
            || !(document.get("getMore") instanceof Number)) {
            return null;
        }
        try {
            Cursor cursor = cursors.getCursor(((Number) document.get("getMore")).longValue());
            return cursor instanceof ChangeStreamOplog.StreamCursor ? (ChangeStreamOplog.StreamCursor) cursor : null;
        } catch (MongoServerException e) {
            return null;
        }
    }

    private static long awaitMillis(Document getMore) {
        Object maxTimeMS = getMore.get("maxTimeMS");
        return maxTimeMS instanceof Number ? ((Number) maxTimeMS).longValue() : DEFAULT_AWAIT_MS;
    }
}
