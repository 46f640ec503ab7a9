import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;

import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

/**
 * Actions on a resource, as a role document lists them:
 * {@code {resource: {db, collection} | {cluster: true} | {anyResource: true}, actions: [...]}}.
 * Actions are kept sorted, as MongoDB prints an ActionSet.
 */
record Privilege(ResourcePattern resource, Set<String> actions) {

    Privilege {
        actions = Set.copyOf(new TreeSet<>(actions));
    }

    static Privilege of(ResourcePattern resource, String... actions) {
        return new Privilege(resource, Set.of(actions));
    }

    /** A privilege document of createRole/updateRole; unknown action names are refused as MongoDB refuses them. */
    static Privilege parse(Object privilege) {
        if (!(privilege instanceof Document document) || !document.containsKey("resource")
            || !(document.get("actions") instanceof List<?> names)) {
            throw new MongoServerError(2, "BadValue",
                "A privilege must be a document with 'resource' and 'actions': " + privilege);
        }
        Set<String> actions = new TreeSet<>();
        List<String> unknown = new ArrayList<>();
        for (Object name : names) {
            if (name instanceof String action && ActionTypes.isKnown(action)) {
                actions.add(action);
            } else {
                unknown.add(String.valueOf(name));
            }
        }
        if (!unknown.isEmpty()) {
            // user_management_commands.cpp: uassertNoUnrecognizedActions
            throw new MongoServerError(2, "BadValue",
                "Unrecognized action privilege strings: " + String.join(", ", unknown));
        }
        return new Privilege(ResourcePattern.parse(document.get("resource")), actions);
    }

    Document toDocument() {
        return new Document("resource", resource.toDocument()).append("actions", new ArrayList<>(new TreeSet<>(actions)));
    }

    /** One privilege per resource, the actions of each merged (Privilege::addPrivilegesToPrivilegeVector). */
    static List<Privilege> merge(Collection<Privilege> privileges) {
        Map<ResourcePattern, Set<String>> byResource = new TreeMap<>();
        for (Privilege privilege : privileges) {
            byResource.computeIfAbsent(privilege.resource(), r -> new TreeSet<>()).addAll(privilege.actions());
        }
        List<Privilege> merged = new ArrayList<>();
        byResource.forEach((resource, actions) -> merged.add(new Privilege(resource, actions)));
        return merged;
    }

    static List<Document> toDocuments(Collection<Privilege> privileges) {
        List<Document> documents = new ArrayList<>();
        for (Privilege privilege : privileges) {
            documents.add(privilege.toDocument());
        }
        return documents;
    }
}
