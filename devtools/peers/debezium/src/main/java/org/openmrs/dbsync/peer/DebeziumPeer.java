package org.openmrs.dbsync.peer;

import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.format.Json;

import javax.jms.Connection;
import javax.jms.DeliveryMode;
import javax.jms.JMSException;
import javax.jms.MessageProducer;
import javax.jms.Queue;
import javax.jms.Session;

import org.apache.activemq.artemis.jms.client.ActiveMQConnectionFactory;
import org.apache.kafka.connect.json.JsonConverter;
import org.apache.kafka.connect.storage.MemoryOffsetBackingStore;

import java.io.PrintStream;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.nio.ByteBuffer;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

/**
 * The Debezium peer of dbsync's benchmark: Debezium embedded (MariaDB connector) streams the binlog of one database
 * from a given file/position and sends every row change as one persistent JSON text message to an ANYCAST Artemis
 * queue over the core protocol (JMS), committing one JMS transaction per 500 messages.
 *
 * <p>It exits once it has sent and committed {@code --events} row changes (exit 0); after {@code --idle-seconds}
 * without a new change event, or {@code --startup-seconds} before the first one (exit 2); or on an engine or JMS
 * error (exit 1). Exiting 0 or 2, it prints one JSON line to stdout: {"events": n, "seconds": s, ...}, seconds from
 * engine start to the last JMS commit. Logs go to stderr.
 *
 * <p>Passwords come from the environment only: DBZ_PEER_DB_PASSWORD and DBZ_PEER_ARTEMIS_PASSWORD.
 *
 * <p>Offsets: an in-memory store seeded with {"file", "pos"} under the partition {"server": topic prefix}, and
 * snapshot.mode=recovery, so the connector reads the schema of the captured tables (no data) into an in-memory schema
 * history and then streams from exactly that binlog position.
 */
public final class DebeziumPeer {

    static final int COMMIT_EVERY = 500;
    static final String ENGINE_NAME = "dbsync-bench-debezium-peer";

    /** The seed of {@link SeededOffsetStore}: serialized key and value, set by main before the engine starts. */
    static volatile Map<ByteBuffer, ByteBuffer> seed = Map.of();

    /** An in-memory offset store that starts out holding the one offset main seeded. */
    public static final class SeededOffsetStore extends MemoryOffsetBackingStore {
        public SeededOffsetStore() {
        }

        @Override
        public synchronized void start() {
            super.start();
            data.putAll(seed);
        }

        @Override
        public Set<Map<String, Object>> connectorPartitions(String connectorName) {
            return Set.of();
        }
    }

    private static final class Args {
        final Map<String, String> values = new HashMap<>();

        Args(String[] argv) {
            for (int i = 0; i < argv.length; i++) {
                String arg = argv[i];
                if (!arg.startsWith("--") || i + 1 >= argv.length) {
                    throw new IllegalArgumentException("expected --name value pairs, got: " + arg);
                }
                values.put(arg.substring(2), argv[++i]);
            }
        }

        String get(String name) {
            String value = values.get(name);
            if (value == null) {
                throw new IllegalArgumentException("missing --" + name);
            }
            return value;
        }

        String get(String name, String fallback) {
            return values.getOrDefault(name, fallback);
        }
    }

    /** Sends the row changes of each Debezium batch, one JMS transaction per 500 messages. */
    private static final class Sender implements DebeziumEngine.ChangeConsumer<ChangeEvent<String, String>> {
        private final Session session;
        private final MessageProducer producer;
        private final String dataTopicPrefix;
        private final long expected;
        private int pending;
        volatile long sent;           // messages sent (committed or not)
        volatile long committed;      // messages in committed JMS transactions
        volatile long skipped;        // records that were no row change (schema changes, heartbeats, ...)
        volatile long lastCommitNanos;
        volatile long firstEventNanos;
        volatile long lastActivityNanos = System.nanoTime();

        Sender(Session session, MessageProducer producer, String dataTopicPrefix, long expected) {
            this.session = session;
            this.producer = producer;
            this.dataTopicPrefix = dataTopicPrefix;
            this.expected = expected;
        }

        @Override
        public synchronized void handleBatch(List<ChangeEvent<String, String>> records,
                                             DebeziumEngine.RecordCommitter<ChangeEvent<String, String>> committer)
                throws InterruptedException {
            lastActivityNanos = System.nanoTime();
            try {
                for (ChangeEvent<String, String> record : records) {
                    String destination = record.destination();
                    String value = record.value();
                    if (value != null && destination != null && destination.startsWith(dataTopicPrefix)) {
                        if (firstEventNanos == 0) {
                            firstEventNanos = System.nanoTime();
                        }
                        producer.send(session.createTextMessage(value));
                        sent++;
                        pending++;
                        if (pending >= COMMIT_EVERY) {
                            commit();
                        }
                    } else {
                        skipped++;
                    }
                    committer.markProcessed(record);
                }
                // the end of a batch (or reaching the count) commits the rest, before the offsets move on
                if (pending > 0) {
                    commit();
                }
                committer.markBatchFinished();
                lastActivityNanos = System.nanoTime();
            } catch (JMSException e) {
                throw new RuntimeException("JMS send/commit failed: " + e, e);
            }
        }

        private void commit() throws JMSException {
            session.commit();
            committed += pending;
            pending = 0;
            lastCommitNanos = System.nanoTime();
        }

        boolean done() {
            return committed >= expected;
        }
    }

    public static void main(String[] argv) throws Exception {
        PrintStream out = System.out;
        System.setOut(System.err); // nothing but the result line on stdout
        int code;
        try {
            code = run(new Args(argv), out);
        } catch (Throwable e) {
            System.err.println("debezium-peer: " + e);
            e.printStackTrace(System.err);
            code = 1;
        }
        out.flush();
        System.err.flush();
        Runtime.getRuntime().halt(code);
    }

    private static String env(String name) {
        String value = System.getenv(name);
        if (value == null) {
            throw new IllegalArgumentException("environment variable " + name + " is not set");
        }
        return value;
    }

    /** MariaDB's GTID position at a binlog file/position (the last GTID of each domain up to it). */
    static String gtidPosition(String host, String port, String user, String password, String file, long pos)
            throws Exception {
        String url = "jdbc:mariadb://" + host + ":" + port + "/";
        try (java.sql.Connection conn = DriverManager.getConnection(url, user, password);
             PreparedStatement stmt = conn.prepareStatement("SELECT BINLOG_GTID_POS(?, ?)")) {
            stmt.setString(1, file);
            stmt.setLong(2, pos);
            try (ResultSet rs = stmt.executeQuery()) {
                String value = rs.next() ? rs.getString(1) : null;
                if (value == null) {
                    throw new IllegalArgumentException("no GTID position for " + file + ":" + pos
                            + " (BINLOG_GTID_POS returned NULL: is that position in the binlog?)");
                }
                return value;
            }
        }
    }

    static int run(Args args, PrintStream out) throws Exception {
        String dbHost = args.get("db-host");
        String dbPort = args.get("db-port");
        String dbUser = args.get("db-user");
        String dbPassword = env("DBZ_PEER_DB_PASSWORD");
        String database = args.get("database");
        String binlogFile = args.get("binlog-file");
        long binlogPos = Long.parseLong(args.get("binlog-pos"));
        String artemisHost = args.get("artemis-host");
        int artemisPort = Integer.parseInt(args.get("artemis-port"));
        String artemisUser = args.get("artemis-user");
        String artemisPassword = env("DBZ_PEER_ARTEMIS_PASSWORD");
        String queueName = args.get("queue");
        long expected = Long.parseLong(args.get("events"));
        double idleSeconds = Double.parseDouble(args.get("idle-seconds", "60"));
        double startupSeconds = Double.parseDouble(args.get("startup-seconds", "300"));
        String serverId = args.get("server-id", "54001");
        String prefix = args.get("topic-prefix", "dbzpeer");

        // the offset Debezium will find: key ["<engine name>", {"server": prefix}], value {"file": ..., "pos": ...},
        // both serialized by the JSON converter the engine itself uses for its offset store (schemas off)
        JsonConverter keyConverter = new JsonConverter();
        keyConverter.configure(Map.of("schemas.enable", "false"), true);
        JsonConverter valueConverter = new JsonConverter();
        valueConverter.configure(Map.of("schemas.enable", "false"), false);
        // MariaDB always has GTIDs, and Debezium 3.5 then hands the binlog client an empty GTID set when the offset
        // has none, which its MariaDB path dereferences (NullPointerException in requestBinaryLogStreamMaria,
        // mysql-binlog-connector-java 0.40.6): so the offset carries the GTID position of that file/pos too
        String gtids = args.get("gtids", null);
        if (gtids == null) {
            gtids = gtidPosition(dbHost, dbPort, dbUser, dbPassword, binlogFile, binlogPos);
        }
        System.err.println("debezium-peer: starting at " + binlogFile + ":" + binlogPos + " (GTID position '" + gtids
                + "')");
        Map<String, Object> partition = Map.of("server", prefix);
        Map<String, Object> offset = new LinkedHashMap<>();
        offset.put("file", binlogFile);
        offset.put("pos", binlogPos);
        if (!gtids.isEmpty()) {
            offset.put("gtids", gtids);
        }
        byte[] key = keyConverter.fromConnectData(ENGINE_NAME, null, List.of(ENGINE_NAME, partition));
        byte[] value = valueConverter.fromConnectData(ENGINE_NAME, null, offset);
        seed = Map.of(ByteBuffer.wrap(key), ByteBuffer.wrap(value));

        Properties props = new Properties();
        props.setProperty("name", ENGINE_NAME);
        props.setProperty("connector.class", "io.debezium.connector.mariadb.MariaDbConnector");
        props.setProperty("offset.storage", SeededOffsetStore.class.getName());
        props.setProperty("offset.flush.interval.ms", "10000");
        props.setProperty("database.hostname", dbHost);
        props.setProperty("database.port", dbPort);
        props.setProperty("database.user", dbUser);
        props.setProperty("database.password", dbPassword);
        props.setProperty("database.server.id", serverId);
        props.setProperty("database.include.list", database);
        props.setProperty("topic.prefix", prefix);
        // schema (no data) into a fresh history, then stream from the seeded offset
        props.setProperty("snapshot.mode", "recovery");
        props.setProperty("snapshot.locking.mode", "none"); // no FLUSH TABLES WITH READ LOCK (needs RELOAD)
        props.setProperty("schema.history.internal", "io.debezium.relational.history.MemorySchemaHistory");
        props.setProperty("schema.history.internal.store.only.captured.databases.ddl", "true");
        props.setProperty("schema.history.internal.store.only.captured.tables.ddl", "true");
        props.setProperty("include.schema.changes", "false");
        props.setProperty("tombstones.on.delete", "false");
        props.setProperty("converter.schemas.enable", "false");
        props.setProperty("key.converter.schemas.enable", "false");
        props.setProperty("value.converter.schemas.enable", "false");
        // batches of 2000 commit at exact multiples of 500; a shorter batch (the queue ran dry) commits its rest
        props.setProperty("max.batch.size", args.get("max-batch-size", "2000"));
        props.setProperty("max.queue.size", args.get("max-queue-size", "8192"));
        props.setProperty("poll.interval.ms", args.get("poll-interval-ms", "100"));

        ActiveMQConnectionFactory factory = new ActiveMQConnectionFactory(
                "tcp://" + artemisHost + ":" + artemisPort);
        Connection connection = factory.createConnection(artemisUser, artemisPassword);
        Session session = connection.createSession(true, Session.SESSION_TRANSACTED);
        Queue queue = session.createQueue(queueName); // ANYCAST with Artemis JMS
        MessageProducer producer = session.createProducer(queue);
        producer.setDeliveryMode(DeliveryMode.PERSISTENT);
        connection.start();

        Sender sender = new Sender(session, producer, prefix + "." + database + ".", expected);
        AtomicReference<Throwable> failure = new AtomicReference<>();
        AtomicReference<Boolean> finished = new AtomicReference<>(false);
        DebeziumEngine<ChangeEvent<String, String>> engine = DebeziumEngine.create(Json.class)
                .using(props)
                .notifying(sender)
                .using((success, message, error) -> {
                    if (!success) {
                        failure.compareAndSet(null, error != null ? error : new RuntimeException(message));
                    }
                    finished.set(true);
                })
                .build();

        ExecutorService executor = Executors.newSingleThreadExecutor();
        long start = System.nanoTime();
        sender.lastActivityNanos = start;
        executor.execute(engine);

        int code;
        while (true) {
            if (sender.done()) {
                code = 0;
                break;
            }
            if (failure.get() != null) {
                throw new RuntimeException("the Debezium engine failed: " + failure.get(), failure.get());
            }
            if (finished.get()) {
                throw new RuntimeException("the Debezium engine stopped after " + sender.committed + " events");
            }
            // idle: no change event for idle-seconds once they flow; before the first one, startup-seconds
            // (schema recovery reads every captured table's structure first)
            double limit = sender.firstEventNanos == 0 ? Math.max(startupSeconds, idleSeconds) : idleSeconds;
            if ((System.nanoTime() - sender.lastActivityNanos) / 1e9 > limit) {
                System.err.printf("debezium-peer: idle for %.0f s after %d of %d events%n", limit,
                        sender.committed, expected);
                code = 2;
                break;
            }
            Thread.sleep(20);
        }
        long end = sender.lastCommitNanos != 0 ? sender.lastCommitNanos : System.nanoTime();
        double seconds = (end - start) / 1e9;
        double firstEvent = sender.firstEventNanos != 0 ? (sender.firstEventNanos - start) / 1e9 : -1;
        out.println(String.format(Locale.ROOT,
                "{\"events\": %d, \"seconds\": %.3f, \"first_event_seconds\": %.3f, \"skipped\": %d}",
                sender.committed, seconds, firstEvent, sender.skipped));
        out.flush();

        // shut down politely, but do not let a slow close hold the exit up
        Thread closer = new Thread(() -> {
            try {
                engine.close();
                executor.shutdown();
                executor.awaitTermination(10, TimeUnit.SECONDS);
                connection.close();
            } catch (Exception e) {
                System.err.println("debezium-peer: closing: " + e);
            }
        });
        closer.setDaemon(true);
        closer.start();
        closer.join(15_000);
        return code;
    }

    private DebeziumPeer() {
    }
}
