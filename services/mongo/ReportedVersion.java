import java.util.List;
import java.util.Map;

import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * The MongoDB version this server reports (buildInfo, serverStatus, hello's maxWireVersion) and
 * behaves as where versions differ (which stages exist). Default 6.0.0; set at start with
 * {@code -Dmongo.version=7.0.2} or at run time with the test-only command, on admin,
 * {@code {setServerVersion: "7.0.2"}} (connections opened earlier keep the wire version of their
 * handshake). Only 6.0 to 8.x: the launcher's other behaviours are those releases'.
 */
final class ReportedVersion implements MongoVersion {
    /** maxWireVersion by release (src/mongo/db/wire_version.h). */
    private static final Map<String, Integer> WIRE_VERSIONS = Map.ofEntries(Map.entry("6.0", 17),
        Map.entry("6.1", 18), Map.entry("6.2", 19), Map.entry("6.3", 20), Map.entry("7.0", 21),
        Map.entry("7.1", 22), Map.entry("7.2", 23), Map.entry("7.3", 24), Map.entry("8.0", 25),
        Map.entry("8.1", 26), Map.entry("8.2", 27));

    private volatile List<Integer> version;

    ReportedVersion(String initial) {
        version = parse(initial);
    }

    static boolean handles(String database, String command) {
        return database.equals("admin") && command.equalsIgnoreCase("setServerVersion");
    }

    Document configure(Document query) {
        Object given = query.get("setServerVersion");
        List<Integer> was = version;
        version = parse(given instanceof String text ? text : String.valueOf(given));
        return new Document("was", String.join(".", was.stream().map(String::valueOf).toList())).append("ok", 1.0);
    }

    @Override
    public List<Integer> getVersionArray() {
        return version;
    }

    @Override
    public int getWireVersion() {
        List<Integer> v = version;
        return WIRE_VERSIONS.get(v.get(0) + "." + v.get(1));
    }

    /** At least {@code major.minor.patch}. */
    boolean atLeast(int major, int minor, int patch) {
        List<Integer> v = version;
        int[] have = {v.get(0), v.get(1), v.get(2)};
        int[] want = {major, minor, patch};
        for (int i = 0; i < 3; i++) {
            if (have[i] != want[i]) {
                return have[i] > want[i];
            }
        }
        return true;
    }

    private static List<Integer> parse(String text) {
        String[] parts = text.split("\\.");
        try {
            if (parts.length == 3) {
                List<Integer> parsed = List.of(Integer.parseInt(parts[0]), Integer.parseInt(parts[1]),
                    Integer.parseInt(parts[2]));
                if (WIRE_VERSIONS.containsKey(parsed.get(0) + "." + parsed.get(1)) && parsed.get(2) >= 0) {
                    return parsed;
                }
            }
        } catch (NumberFormatException e) {
            // reported below
        }
        throw new MongoServerError(2, "BadValue", "a server version is MAJOR.MINOR.PATCH between 6.0.0 and 8.2.x: "
            + text);
    }
}
