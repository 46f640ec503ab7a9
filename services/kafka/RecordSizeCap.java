import java.util.Map;

import org.apache.kafka.common.errors.PolicyViolationException;
import org.apache.kafka.server.policy.CreateTopicPolicy;

/**
 * A cap on the max.message.bytes a new topic may ask for, as managed Kafka services have one
 * (Confluent Cloud refuses more than 8 MiB on its Standard clusters): a topic asking for more
 * than the broker property {@code cdc.test.max.message.bytes.cap} is refused with
 * POLICY_VIOLATION. For the tests' private brokers
 * ({@code create.topic.policy.class.name=RecordSizeCap}); the shared broker has no cap.
 */
public final class RecordSizeCap implements CreateTopicPolicy {
    static final String CAP = "cdc.test.max.message.bytes.cap";
    private long cap = Long.MAX_VALUE;

    @Override
    public void configure(Map<String, ?> configs) {
        Object value = configs.get(CAP);
        if (value != null) {
            cap = Long.parseLong(value.toString());
        }
    }

    @Override
    public void validate(RequestMetadata request) throws PolicyViolationException {
        String asked = request.configs().get("max.message.bytes");
        if (asked != null && Long.parseLong(asked) > cap) {
            throw new PolicyViolationException("Config property 'max.message.bytes' with value '"
                + asked + "' exceeded max limit of " + cap + ".");
        }
    }

    @Override
    public void close() {
    }
}
