#!/usr/bin/env bash
# Provides OpenSearch (the search engine's local test server): a single-node
# install of the server, a few modules and the security plugin, assembled
# from Maven Central artifacts with `mvn` at the versions in versions.env (the
# plugin must match the server exactly). Cached in
# ${DBPS_CACHE_DIR:-~/.cache/dbps}/opensearch-<version>/ (downloads in
# .../m2/); prints that directory as the last line of stdout.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
VERSION=$OPENSEARCH_VERSION
SECURITY_VERSION=$OPENSEARCH_SECURITY_VERSION
MODULES="transport-netty4 analysis-common mapper-extras reindex"
CACHE_ROOT="${DBPS_CACHE_DIR:-$HOME/.cache/dbps}"
DEST="$CACHE_ROOT/opensearch-$VERSION"
LAYOUT_REV=1
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.6.1"

log() { printf '[build-opensearch] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# What the cache entry must contain.
# shellcheck disable=SC2086
STAMP="layout=$LAYOUT_REV opensearch=$VERSION security=$SECURITY_VERSION modules=$(printf '%s\n' $MODULES | sort | tr '\n' ',')"

cache_ok() { [[ -f "$DEST/.complete" ]] && [[ "$(cat "$DEST/.complete")" == "$STAMP" ]]; }

if cache_ok; then
  log "cached: $DEST"
  echo "$DEST"
  exit 0
fi

command -v mvn >/dev/null   || die "mvn is required (apt-get install maven)"
command -v java >/dev/null  || die "java is required (apt-get install default-jre-headless)"
command -v unzip >/dev/null || die "unzip is required (apt-get install unzip)"

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.opensearch-$VERSION.lock"
flock 9
# Another run may have finished while this one waited for the lock.
if cache_ok; then echo "$DEST"; exit 0; fi

STAGE="$(mktemp -d "$CACHE_ROOT/.opensearch-$VERSION.build.XXXXXX")"
cleanup() { rm -rf "$STAGE"; }
trap cleanup EXIT
M2="$CACHE_ROOT/m2"
HOME_DIR="$STAGE/home"
POMS="$STAGE/poms"
mkdir -p "$HOME_DIR"/{lib,modules,plugins,config,bin,logs} "$POMS"

# ---------------------------------------------------------------- modules table
# name -> "groupId:artifactId|plugin class|extended plugins|policy-id"
module_info() {
  case "$1" in
    transport-netty4) echo "org.opensearch.plugin:transport-netty4-client|org.opensearch.transport.Netty4Plugin||netty" ;;
    analysis-common)  echo "org.opensearch.plugin:analysis-common|org.opensearch.analysis.common.CommonAnalysisPlugin||none" ;;
    mapper-extras)    echo "org.opensearch.plugin:mapper-extras-client|org.opensearch.index.mapper.MapperExtrasPlugin||none" ;;
    lang-painless)    echo "org.opensearch.plugin:lang-painless|org.opensearch.painless.PainlessPlugin||painless" ;;
    reindex)          echo "org.opensearch.plugin:reindex-client|org.opensearch.index.reindex.ReindexPlugin||reindex" ;;
    *) return 1 ;;
  esac
}
for m in $MODULES; do module_info "$m" >/dev/null || die "unknown module '$m'"; done
[[ " $MODULES " == *" transport-netty4 "* ]] || log "WARNING: without transport-netty4 there is no HTTP/transport layer"

# ---------------------------------------------------------------- throwaway poms
dep() { # groupId artifactId version [type]
  printf '    <dependency><groupId>%s</groupId><artifactId>%s</artifactId><version>%s</version>%s</dependency>\n' \
    "$1" "$2" "$3" "${4:+<type>$4</type>}"
}
child_pom() { # dir outdir deps...
  local dir="$1" out="$2"; shift 2
  mkdir -p "$POMS/$dir"
  {
    cat <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.dbps.opensearch</groupId><artifactId>$dir</artifactId><version>1</version><packaging>pom</packaging>
  <dependencies>
EOF
    printf '%s' "$*"
    cat <<EOF
  </dependencies>
  <build><plugins><plugin>
    <groupId>org.apache.maven.plugins</groupId><artifactId>maven-dependency-plugin</artifactId><version>3.6.1</version>
    <configuration><outputDirectory>$out</outputDirectory><includeScope>runtime</includeScope></configuration>
  </plugin></plugins></build>
</project>
EOF
  } >"$POMS/$dir/pom.xml"
}

# server: org.opensearch:opensearch and its runtime deps.  log4j-core, spatial4j
# and jts-core are <optional> in the server POM but are part of the real lib/;
# opensearch-plugin-classloader (ExtendedPluginsClassLoader) is not a dependency
# of the server POM at all, but the plugin loader needs it on the classpath.
# It is not published for every patch release (2.19.4: no; 2.19.0/.1/.6: yes, with
# a byte-identical class), so take the newest one <= VERSION in the same minor.
child_pom server "$HOME_DIR/lib" \
  "$(dep org.opensearch opensearch "$VERSION")
$(dep org.opensearch opensearch-plugin-classloader "[${VERSION%.*}.0,$VERSION]")
$(dep org.apache.logging.log4j log4j-core 2.21.0)
$(dep org.locationtech.spatial4j spatial4j 0.7)
$(dep org.locationtech.jts jts-core 1.15.0)
"
MODULE_DIRS=(server)
for m in $MODULES; do
  IFS='|' read -r ga _cls _ext _pol <<<"$(module_info "$m")"
  child_pom "module-$m" "$HOME_DIR/modules/$m" "$(dep "${ga%%:*}" "${ga#*:}" "$VERSION")
"
  MODULE_DIRS+=("module-$m")
done
child_pom security "$STAGE/security-zip" "$(dep org.opensearch.plugin opensearch-security "$SECURITY_VERSION" zip)
"
MODULE_DIRS+=(security)
{
  cat <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.dbps.opensearch</groupId><artifactId>aggregator</artifactId><version>1</version><packaging>pom</packaging>
  <modules>
EOF
  for d in "${MODULE_DIRS[@]}"; do echo "    <module>$d</module>"; done
  echo "  </modules>"
  echo "</project>"
} >"$POMS/pom.xml"

log "resolving OpenSearch $VERSION + security $SECURITY_VERSION + modules [$MODULES] with mvn (local repo: $M2)"
t0=$(date +%s)
if ! mvn -B -q -f "$POMS/pom.xml" -Dmaven.repo.local="$M2" "$DEP_PLUGIN:copy-dependencies" "$DEP_PLUGIN:list" \
     -DoutputFile=resolved.txt -DoutputScope=true >"$STAGE/mvn.log" 2>&1; then
  tail -40 "$STAGE/mvn.log" >&2
  die "maven resolution failed"
fi
log "resolved in $(( $(date +%s) - t0 ))s"

# ---------------------------------------------------------------- modules
write_policy() { # policy-id file
  case "$1" in
    none) return 0 ;;
    netty) cat >"$2" <<'EOF'
// written by build-opensearch.sh for the transport-netty4 module
grant {
  permission java.net.SocketPermission "*", "accept,connect,listen,resolve";
  permission java.lang.RuntimePermission "accessClassInPackage.sun.misc";
  permission java.lang.RuntimePermission "accessClassInPackage.sun.nio.ch";
  permission java.lang.RuntimePermission "accessDeclaredMembers";
  permission java.lang.RuntimePermission "getClassLoader";
  permission java.lang.reflect.ReflectPermission "suppressAccessChecks";
  permission java.util.PropertyPermission "io.netty.*", "read,write";
  permission java.io.FilePermission "/proc/sys/net/core/somaxconn", "read";
};
EOF
    ;;
    painless) cat >"$2" <<'EOF'
// written by build-opensearch.sh for the lang-painless module
grant {
  permission java.lang.RuntimePermission "createClassLoader";
  permission java.lang.RuntimePermission "getClassLoader";
};
EOF
    ;;
    reindex) cat >"$2" <<'EOF'
// written by build-opensearch.sh for the reindex module (reindex-from-remote)
grant {
  permission java.net.SocketPermission "*", "connect,resolve";
};
EOF
    ;;
  esac
}

for m in $MODULES; do
  IFS='|' read -r ga cls ext pol <<<"$(module_info "$m")"
  md="$HOME_DIR/modules/$m"
  # a module must not carry a jar the server already has (jar hell)
  for j in "$md"/*.jar; do
    [[ -e "$HOME_DIR/lib/$(basename "$j")" ]] && rm -f "$j"
  done
  main_jar="$md/${ga#*:}-$VERSION.jar"
  [[ -f "$main_jar" ]] || die "module jar $main_jar missing"
  unzip -l "$main_jar" "${cls//.//}.class" >/dev/null 2>&1 || die "$cls not found in $main_jar"
  cat >"$md/plugin-descriptor.properties" <<EOF
# written by e2e/tools/build-opensearch.sh: the Maven jar carries no descriptor
description=OpenSearch module $m (assembled from ${ga}:${VERSION})
version=$VERSION
name=$m
classname=$cls
java.version=11
opensearch.version=$VERSION
extended.plugins=$ext
has.native.controller=false
EOF
  write_policy "$pol" "$md/plugin-security.policy"
done

# ---------------------------------------------------------------- security plugin
zip="$STAGE/security-zip/opensearch-security-$SECURITY_VERSION.zip"
[[ -f "$zip" ]] || die "security plugin zip not resolved"
sec="$HOME_DIR/plugins/opensearch-security"
mkdir -p "$sec"
unzip -q "$zip" -d "$sec"
want="opensearch.version=$VERSION"
grep -qx "$want" "$sec/plugin-descriptor.properties" \
  || die "security plugin $SECURITY_VERSION is built for $(grep '^opensearch.version=' "$sec/plugin-descriptor.properties"), not $VERSION"
# the plugin's own config templates go where `opensearch-plugin install` would put them
mv "$sec/config" "$HOME_DIR/config/opensearch-security"
chmod +x "$sec"/tools/*.sh 2>/dev/null || true

# ---------------------------------------------------------------- config templates
cat >"$HOME_DIR/config/opensearch.yml" <<'EOF'
# default config written by build-opensearch.sh; run-node.sh writes its own
cluster.name: dbps
node.name: node-1
network.host: 127.0.0.1
discovery.type: single-node
EOF

cat >"$HOME_DIR/config/jvm.options" <<'EOF'
# jvm.options written by build-opensearch.sh; read by bin/opensearch.
# Lines may carry a Java-version prefix: "17:" (only 17), "17-:" (17 and up),
# "11-16:" (range).  OPENSEARCH_JAVA_OPTS is appended after these lines.
-Xms512m
-Xmx512m
-XX:+UseG1GC
-XX:G1ReservePercent=25
-XX:InitiatingHeapOccupancyPercent=30
-XX:+HeapDumpOnOutOfMemoryError
-XX:-OmitStackTraceInFastThrow
-XX:+ShowCodeDetailsInExceptionMessages
-Xss1m
-Djava.awt.headless=true
-Dfile.encoding=UTF-8
-Djna.nosys=true
-Dio.netty.noUnsafe=true
-Dio.netty.noKeySetOptimization=true
-Dio.netty.recycler.maxCapacityPerThread=0
-Dio.netty.allocator.numDirectArenas=0
-Dlog4j.shutdownHookEnabled=false
-Dlog4j2.disable.jmx=true
-Dlog4j2.formatMsgNoLookups=true
-Djava.locale.providers=SPI,COMPAT
# OpenSearch 2.x installs its own SecurityManager at bootstrap
17-:-Djava.security.manager=allow
EOF

cat >"$HOME_DIR/config/log4j2.properties" <<'EOF'
# log4j2.properties written by build-opensearch.sh (console + one rolling file)
status = error

appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] [%node_name]%marker %m%n

appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = ${sys:opensearch.logs.base_path}${sys:file.separator}${sys:opensearch.logs.cluster_name}.log
appender.file.filePattern = ${sys:opensearch.logs.base_path}${sys:file.separator}${sys:opensearch.logs.cluster_name}-%i.log.gz
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] [%node_name]%marker %m%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 64MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3

rootLogger.level = info
rootLogger.appenderRef.console.ref = console
rootLogger.appenderRef.file.ref = file

# deprecation warnings: into the main log, and as HTTP Warning headers
appender.header_warning.type = HeaderWarningAppender
appender.header_warning.name = header_warning
logger.deprecation.name = org.opensearch.deprecation
logger.deprecation.level = warn
logger.deprecation.appenderRef.header_warning.ref = header_warning
logger.deprecation.additivity = true
EOF

# ---------------------------------------------------------------- launcher
cat >"$HOME_DIR/bin/opensearch" <<'EOF'
#!/usr/bin/env bash
# Minimal OpenSearch launcher written by build-opensearch.sh.
#   OPENSEARCH_PATH_CONF  config dir (default <home>/config)
#   OPENSEARCH_JAVA_OPTS  extra JVM options (appended after jvm.options)
#   OPENSEARCH_TMPDIR     java.io.tmpdir (default: a fresh mktemp dir)
#   JAVA_HOME             JDK to use (default: java on PATH)
# Arguments are passed to org.opensearch.bootstrap.OpenSearch (e.g. -E k=v).
set -euo pipefail
OS_HOME="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONF="${OPENSEARCH_PATH_CONF:-$OS_HOME/config}"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
TMPD="${OPENSEARCH_TMPDIR:-$(mktemp -d -t opensearch.XXXXXX)}"
mkdir -p "$TMPD"
jmaj="$("$JAVA" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p')"
jmaj="${jmaj#1.}"
opts=()
while IFS= read -r line || [[ -n "$line" ]]; do
  line="${line#"${line%%[![:space:]]*}"}"; line="${line%"${line##*[![:space:]]}"}"
  [[ -z "$line" || "$line" == \#* ]] && continue
  if [[ "$line" =~ ^([0-9]+)(-([0-9]*))?:(.*)$ ]]; then
    lo="${BASH_REMATCH[1]}"; dash="${BASH_REMATCH[2]}"; hi="${BASH_REMATCH[3]}"; line="${BASH_REMATCH[4]}"
    if [[ -z "$dash" ]]; then (( jmaj == lo )) || continue
    elif [[ -z "$hi" ]]; then (( jmaj >= lo )) || continue
    else (( jmaj >= lo && jmaj <= hi )) || continue; fi
  fi
  opts+=("$line")
done <"$CONF/jvm.options"
# shellcheck disable=SC2206
extra=(${OPENSEARCH_JAVA_OPTS:-})
exec "$JAVA" "${opts[@]}" "${extra[@]}" \
  -Djava.io.tmpdir="$TMPD" \
  -Dopensearch.path.home="$OS_HOME" \
  -Dopensearch.path.conf="$CONF" \
  -Dopensearch.distribution.type=tar \
  -Dopensearch.bundled_jdk=false \
  -cp "$OS_HOME/lib/*" \
  org.opensearch.bootstrap.OpenSearch "$@"
EOF
chmod +x "$HOME_DIR/bin/opensearch"

# ---------------------------------------------------------------- manifest
{
  echo "# OpenSearch $VERSION assembled by build-opensearch.sh from Maven Central on $(date -u +%FT%TZ)"
  echo "# $STAMP"
  echo "# maven coordinates resolved (group:artifact:type:version:scope):"
  for d in "${MODULE_DIRS[@]}"; do
    echo "## $d"
    grep -E '^ +[^ ]+:[^ ]+:' "$POMS/$d/resolved.txt" | sed 's/ -- module.*//' | sort || true
  done
  echo "# files:"
  (cd "$HOME_DIR" && find lib modules -name '*.jar' -printf '%s\t%p\n' | sort -k2)
  echo "# security plugin zip: org.opensearch.plugin:opensearch-security:$SECURITY_VERSION:zip $(stat -c %s "$zip") bytes"
  echo "# download: maven local repo after build: $(du -sb "$M2" | cut -f1) bytes (includes maven's own plugins)"
  echo "# artifacts: $(( $(du -sb "$HOME_DIR/lib" "$HOME_DIR/modules" | awk '{s+=$1} END {print s}') + $(stat -c %s "$zip") )) bytes (lib + modules + security zip)"
} >"$HOME_DIR/BUILD-INFO"
echo "$VERSION" >"$HOME_DIR/VERSION"
echo "$STAMP" >"$HOME_DIR/.complete"

# ---------------------------------------------------------------- publish atomically
if [[ -e "$DEST" ]]; then
  old="$(mktemp -d "$CACHE_ROOT/.opensearch-$VERSION.old.XXXXXX")"
  mv "$DEST" "$old/" && rm -rf "$old"
fi
mv "$HOME_DIR" "$DEST"
log "installed into $DEST ($(du -sh "$DEST" | cut -f1)); maven repo used: $(du -sh "$M2" | cut -f1)"
echo "$DEST"
