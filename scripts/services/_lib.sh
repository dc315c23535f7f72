# Shared helpers for scripts/services/*: sourced, not run.
# Every service keeps its files under $ACTIONSTATE_CACHE/<service> (default
# ~/.cache/actionstate), binds to 127.0.0.1, and is stopped by the pid it wrote.
set -euo pipefail

ACTIONSTATE_CACHE="${ACTIONSTATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/actionstate}"
SERVICES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "error: $*" >&2; exit 1; }
log() { echo "[$(basename "$0")] $*" >&2; }

# port_open PORT: true when something listens on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid_alive PIDFILE: true when the pid in PIDFILE is a live process.
pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# wait_for_port PORT SECONDS PIDFILE LOGFILE: poll until the port accepts
# connections; fail early if the process died, and show its log tail.
wait_for_port() {
  local port=$1 seconds=$2 pidfile=$3 logfile=$4 i
  for ((i = 0; i < seconds * 10; i++)); do
    port_open "$port" && return 0
    if ! pid_alive "$pidfile"; then
      tail -n 40 "$logfile" >&2 || true
      die "process in $pidfile exited before port $port opened (log: $logfile)"
    fi
    sleep 0.1
  done
  tail -n 40 "$logfile" >&2 || true
  die "port $port did not open within ${seconds}s (log: $logfile)"
}

# stop_pidfile PIDFILE [SECONDS]: TERM the process, KILL it after SECONDS.
stop_pidfile() {
  local pidfile=$1 seconds=${2:-30} pid i
  pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < seconds * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

# maven_classpath POM OUTDIR: resolve the pom's runtime dependencies into
# OUTDIR once (offline afterwards) and print a java classpath of its jars.
maven_classpath() {
  local pom=$1 outdir=$2
  if [[ ! -f "$outdir/.complete" ]]; then
    mkdir -p "$outdir"
    mvn -q -B -f "$pom" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$outdir" >&2 \
      || die "maven could not fetch the artifacts of $pom (is Maven Central reachable?)"
    touch "$outdir/.complete"
  fi
  local cp
  cp=$(find "$outdir" -name '*.jar' | sort | tr '\n' ':')
  echo "${cp%:}"
}
