#!/usr/bin/env bash
# Local services for tests and the demo, with no Docker: Apache Kafka (KRaft, single node) and a
# MongoDB wire-protocol server with change streams (mongo-java-server behind services/mongo).
# Jars come from Maven Central. Everything lives under .services/ (ignored by git).
#
#   scripts/services.sh up      start both (harmless when already running), wait, print addresses
#   scripts/services.sh down    stop exactly the processes that `up` started
#   scripts/services.sh status  say what runs
#
# Ports: MONGO_PORT (27017), KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_SSL_PORT
# (9094: TLS) and KAFKA_SASL_SSL_PORT (9095: SASL/SCRAM over TLS). The TLS listeners use a CA and
# a broker certificate made once with the JDK's keytool in .services/tls (ca.pem: the CA for
# clients); the SCRAM user (both SHA-256 and SHA-512) is written when the storage is formatted.
# These are test credentials for a broker on loopback, not secrets.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
home="${SERVICES_DIR:-$root/.services}"
mongo_port="${MONGO_PORT:-27017}"
kafka_port="${KAFKA_PORT:-9092}"
controller_port="${KAFKA_CONTROLLER_PORT:-9093}"
ssl_port="${KAFKA_SSL_PORT:-9094}"
sasl_ssl_port="${KAFKA_SASL_SSL_PORT:-9095}"
tls_password="cdc-migrator-local"
scram_user="cdc-migrator"
scram_password="cdc-migrator-local-secret"
python="${PYTHON:-python3}"

die() { echo "services: $*" >&2; exit 1; }

need() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found: install $2 and run again"
}

alive() {  # alive NAME -> 0 when the process we started under NAME still runs
  local pidfile="$home/$1.pid"
  [[ -f "$pidfile" ]] || return 1
  local pid; pid=$(cat "$pidfile")
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && grep -q "cdc-migrator-service=$1" "/proc/$pid/cmdline" 2>/dev/null
}

port_busy() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

fetch_jars() {
  if [[ ! -f "$home/lib/.complete" || "$root/services/pom.xml" -nt "$home/lib/.complete" ]]; then
    echo "services: fetching Kafka and mongo-java-server jars from Maven Central (first run only)"
    rm -rf "$home/lib"
    mvn -q -B -f "$root/services/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$home/lib" >"$home/maven.log" 2>&1 \
      || { tail -n 20 "$home/maven.log" >&2; die "maven could not fetch the jars (log: $home/maven.log)"; }
    touch "$home/lib/.complete"
  fi
  # services/mongo: the MongoDB server's launcher; services/kafka: what the tests' own brokers
  # load (a policy capping topics' record size, as managed Kafka services have).
  local src=("$root/services/mongo" "$root/services/kafka") out="$home/classes"
  if [[ ! -f "$out/.complete" ]] || [[ -n "$(find "${src[@]}" -name '*.java' -newer "$out/.complete")" ]]; then
    rm -rf "$out"; mkdir -p "$out"
    javac -nowarn -d "$out" -cp "$home/lib/*" "$root"/services/mongo/*.java "$root"/services/kafka/*.java \
      || die "could not compile services/mongo and services/kafka"
    touch "$out/.complete"
  fi
}

make_tls() {  # a CA, a broker certificate it signed (localhost, 127.0.0.1), the CA as PEM
  local tls="$home/tls"
  [[ -f "$tls/.complete" ]] && return
  rm -rf "$tls"; mkdir -p "$tls"
  local ks=(-storetype PKCS12 -storepass "$tls_password" -keypass "$tls_password")
  {
    keytool -genkeypair -alias ca -dname "CN=cdc-migrator local test CA" -keyalg RSA \
      -keysize 2048 -validity 3650 -ext bc:c=ca:true -ext ku:c=keyCertSign,cRLSign \
      -keystore "$tls/ca.p12" "${ks[@]}"
    keytool -exportcert -rfc -alias ca -keystore "$tls/ca.p12" "${ks[@]}" -file "$tls/ca.pem"
    keytool -genkeypair -alias broker -dname "CN=localhost" -keyalg RSA -keysize 2048 \
      -validity 3650 -keystore "$tls/broker.p12" "${ks[@]}"
    keytool -certreq -alias broker -keystore "$tls/broker.p12" "${ks[@]}" -file "$tls/broker.csr"
    keytool -gencert -alias ca -keystore "$tls/ca.p12" "${ks[@]}" -infile "$tls/broker.csr" \
      -outfile "$tls/broker.pem" -rfc -validity 3650 -ext SAN=dns:localhost,ip:127.0.0.1 \
      -ext ku:c=digitalSignature,keyEncipherment -ext eku=serverAuth
    keytool -importcert -noprompt -alias ca -file "$tls/ca.pem" -keystore "$tls/broker.p12" "${ks[@]}"
    keytool -importcert -noprompt -alias broker -file "$tls/broker.pem" \
      -keystore "$tls/broker.p12" "${ks[@]}"
  } >"$home/keytool.log" 2>&1 || { cat "$home/keytool.log" >&2; die "keytool could not make the certificates"; }
  touch "$tls/.complete"
}

start_mongo() {
  if alive mongo; then echo "services: mongo already running (pid $(cat "$home/mongo.pid"))"; return; fi
  port_busy "$mongo_port" && die "port $mongo_port is taken by a process services.sh did not start; set MONGO_PORT"
  nohup java -Dcdc-migrator-service=mongo -Xms256m -Xmx6g -XX:+UseParallelGC \
    -Dlog4j2.configurationFile="$root/services/log4j2.properties" -Dservice.log="$home/mongo.log" \
    -cp "$home/classes:$home/lib/*" LocalMongo 127.0.0.1 "$mongo_port" \
    >"$home/mongo.out" 2>&1 &
  echo $! >"$home/mongo.pid"
}

start_kafka() {
  if alive kafka; then echo "services: kafka already running (pid $(cat "$home/kafka.pid"))"; return; fi
  local port var
  for var in kafka_port ssl_port sasl_ssl_port; do
    port=${!var}
    port_busy "$port" && die "port $port is taken by a process services.sh did not start; set ${var^^} (KAFKA_PORT, KAFKA_SSL_PORT, KAFKA_SASL_SSL_PORT)"
  done
  make_tls
  local props="$home/kafka/server.properties" data="$home/kafka/data"
  mkdir -p "$home/kafka"
  sed -e "s|@PORT@|$kafka_port|g" -e "s|@CONTROLLER_PORT@|$controller_port|g" -e "s|@DATA@|$data|g" \
    -e "s|@SSL_PORT@|$ssl_port|g" -e "s|@SASL_SSL_PORT@|$sasl_ssl_port|g" \
    -e "s|@TLS@|$home/tls|g" -e "s|@TLS_PASSWORD@|$tls_password|g" \
    "$root/services/kafka/server.properties" >"$props"
  local cp="$home/lib/*"
  # Storage formatted before the SCRAM user existed holds only test data: format it again.
  if [[ -f "$data/meta.properties" && ! -f "$data/.scram-users" ]]; then
    echo "services: formatting the local Kafka storage again, to add its SCRAM user"
    rm -rf "$data"
  fi
  if [[ ! -f "$data/meta.properties" ]]; then
    local cluster; cluster=$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    java -Dlog4j2.configurationFile="$root/services/log4j2.properties" -Dservice.log="$home/kafka-format.log" \
      -cp "$cp" kafka.tools.StorageTool format -t "$cluster" -c "$props" \
      --add-scram "SCRAM-SHA-256=[name=$scram_user,password=$scram_password]" \
      --add-scram "SCRAM-SHA-512=[name=$scram_user,password=$scram_password]" \
      >"$home/kafka-format.out" 2>&1 \
      || { cat "$home/kafka-format.out" >&2; die "could not format Kafka storage"; }
    touch "$data/.scram-users"
  fi
  nohup java -Dcdc-migrator-service=kafka -Xms256m -Xmx1g -XX:+UseG1GC \
    -Dlog4j2.configurationFile="$root/services/log4j2.properties" -Dservice.log="$home/kafka.log" \
    -cp "$cp" kafka.Kafka "$props" >"$home/kafka.out" 2>&1 &
  echo $! >"$home/kafka.pid"
}

stop() {
  local name=$1
  if alive "$name"; then
    local pid; pid=$(cat "$home/$name.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    echo "services: stopped $name (pid $pid)"
  fi
  rm -f "$home/$name.pid"
}

case "${1:-}" in
  up)
    need java "a Java 17+ JDK (e.g. apt-get install openjdk-17-jdk-headless)"
    need javac "a Java 17+ JDK (e.g. apt-get install openjdk-17-jdk-headless)"
    need mvn "Apache Maven (e.g. apt-get install maven)"
    need keytool "a Java 17+ JDK (e.g. apt-get install openjdk-17-jdk-headless)"
    mkdir -p "$home"
    fetch_jars
    start_mongo
    start_kafka
    "$python" "$root/scripts/wait_services.py" \
      --mongo "mongodb://127.0.0.1:$mongo_port/app?directConnection=true" \
      --kafka "127.0.0.1:$kafka_port" --logs "$home" \
      || die "services did not become ready (logs in $home)"
    echo "services: Kafka also on 127.0.0.1:$ssl_port (SSL) and 127.0.0.1:$sasl_ssl_port" \
      "(SASL_SSL, SCRAM user $scram_user); CA certificate $home/tls/ca.pem" >&2
    ;;
  down)
    stop kafka
    stop mongo
    ;;
  restart-kafka)  # used by the fault tests: stop the broker and start it again on the same data
    stop kafka
    start_kafka
    ;;
  status)
    for n in mongo kafka; do
      if alive "$n"; then echo "$n: running (pid $(cat "$home/$n.pid"))"; else echo "$n: stopped"; fi
    done
    ;;
  *)
    echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
