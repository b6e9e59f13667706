#!/usr/bin/env bash
# Local S3-compatible server (moto) for tests and demos.
#   s3-server.sh start DIR PORT   create venv in DIR/venv if missing, start on 127.0.0.1:PORT,
#                                 print export lines (AWS_ENDPOINT_URL_S3, EF__AWS_*, EF__AWS_S3_BACKUP_BUCKET)
#   s3-server.sh stop DIR         stop the server started from DIR (no-op if not running)
#   s3-server.sh clock DIR OFFSET set the server clock (needs S3_FAKETIME=1 at start): e.g. -40d, +0,
#                                 '@2024-01-01 12:00:00'; new objects get that LastModified
# Env: BUCKET      bucket to create at start (optional)
#      S3_AUTH=1   (default) enforce SigV4: an IAM user + access key is created and printed;
#                  wrong keys/secrets get 403 InvalidAccessKeyId / SignatureDoesNotMatch.
#      S3_AUTH=0   no auth: any credentials are accepted (printed as test/test).
#      PYTHON      interpreter used to create the venv (default python3)
#      S3_FAKETIME=1  run the server under libfaketime (Debian package faketime), clock file DIR/clock
# State lives only in memory: stop/start loses all buckets and objects.
# `A && B || die` is meant: die when either test fails.
# shellcheck disable=SC2015
set -euo pipefail

MOTO_SPEC='moto[s3,server]==5.2.5'
# The end-to-end tests' SMTP sink (notifications by e-mail) lives in the same venv.
SMTP_SPEC='aiosmtpd==1.4.6'
die() { echo "s3-server.sh: error: $*" >&2; exit 1; }
log() { echo "s3-server.sh: $*" >&2; }
need_port() { [[ "${1:-}" =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ] && [ "$1" -lt 65536 ] || die "invalid PORT '${1:-}'"; }
alive() {  # pid file points to a live moto_server process
  local pid; pid="$(cat "$DIR/moto.pid" 2>/dev/null)" || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -qa moto_server "/proc/$pid/cmdline" 2>/dev/null
}

ensure_venv() {
  local py="$DIR/venv/bin/python" want="${MOTO_SPEC##*==} ${SMTP_SPEC##*==}"
  if [ -x "$py" ] && [ "$("$py" -c 'import moto, aiosmtpd; print(moto.__version__, aiosmtpd.__version__)' 2>/dev/null)" = "$want" ]; then return 0; fi
  local sys_py="${PYTHON:-python3}"
  command -v "$sys_py" >/dev/null || die "$sys_py not found (set PYTHON)"
  log "creating venv in $DIR/venv and installing $MOTO_SPEC $SMTP_SPEC (about a minute)"
  [ -x "$py" ] || "$sys_py" -m venv "$DIR/venv" || die "python venv creation failed (Debian: apt-get install python3-venv)"
  "$DIR/venv/bin/pip" install -q --disable-pip-version-check "$MOTO_SPEC" "$SMTP_SPEC" >"$DIR/pip.log" 2>&1 \
    || { tail -n 20 "$DIR/pip.log" >&2; die "pip install $MOTO_SPEC $SMTP_SPEC failed (see $DIR/pip.log)"; }
}

cmd_start() {
  need_port "$PORT"
  mkdir -p "$DIR/tmp" 2>/dev/null || die "cannot create $DIR"
  if alive; then
    [ "$(cat "$DIR/port" 2>/dev/null)" = "$PORT" ] || die "server from $DIR already running on port $(cat "$DIR/port" 2>/dev/null) (stop it first)"
    [ -f "$DIR/s3.env" ] || die "server running but $DIR/s3.env missing; stop and start again"
    log "already running on port $PORT"; cat "$DIR/s3.env"; return 0
  fi
  ensure_venv
  rm -f "$DIR/s3.env" "$DIR/moto.pid" "$DIR/clock"
  echo "$PORT" > "$DIR/port"
  local pre=()
  if [ "${S3_FAKETIME:-0}" = 1 ]; then  # LastModified cannot be set through the API; a fake clock can
    local lib="" f
    for f in /usr/lib/*/faketime/libfaketimeMT.so.1; do [ -e "$f" ] && { lib="$f"; break; }; done
    [ -n "$lib" ] || die "S3_FAKETIME=1 needs libfaketime (apt-get install faketime)"
    echo "+0" > "$DIR/clock"
    pre=(env LD_PRELOAD="$lib" FAKETIME_TIMESTAMP_FILE="$DIR/clock" FAKETIME_NO_CACHE=1 FAKETIME_DONT_FAKE_MONOTONIC=1)
  fi
  TMPDIR="$DIR/tmp" nohup "${pre[@]}" "$DIR/venv/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$DIR/moto.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" > "$DIR/moto.pid"
  local creds
  creds="$("$DIR/venv/bin/python" - "http://127.0.0.1:$PORT" "$pid" "${BUCKET:-}" "${S3_AUTH:-1}" <<'PY'
import json, os, sys, time, urllib.request
ep, pid, bucket, auth = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] != "0"
deadline = time.time() + 30
while True:  # readiness: /moto-api/ answers once the server is up ("/" is an S3 call)
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("server process exited")
    try:
        urllib.request.urlopen(ep + "/moto-api/", timeout=1).read(); break
    except Exception:
        if time.time() > deadline: sys.exit("server not ready after 30s")
        time.sleep(0.1)
import boto3
from botocore.config import Config
def client(svc, ak="test", sk="test"):
    return boto3.client(svc, endpoint_url=ep, region_name="us-east-1", aws_access_key_id=ak,
                        aws_secret_access_key=sk, config=Config(s3={"addressing_style": "path"}))
ak = sk = "test"
if auth:  # user + key while auth is still off, then switch SigV4 checking on for every later call
    iam = client("iam")
    iam.create_user(UserName="backup-test")
    iam.put_user_policy(UserName="backup-test", PolicyName="s3-full", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="backup-test")["AccessKey"]
    ak, sk = key["AccessKeyId"], key["SecretAccessKey"]
if bucket:
    client("s3").create_bucket(Bucket=bucket)
if auth:
    urllib.request.urlopen(urllib.request.Request(ep + "/moto-api/reset-auth", data=b"0", method="POST",
                                                  headers={"Content-Type": "text/plain"})).read()
print(ak, sk)
PY
)" || { tail -n 20 "$DIR/moto.log" >&2; cmd_stop; die "startup failed (see the error above and $DIR/moto.log; port $PORT in use?)"; }
  local ak="${creds% *}" sk="${creds#* }"
  {
    echo "export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$PORT"
    printf 'export EF__AWS_ACCESS_KEY_ID=%q\nexport EF__AWS_SECRET_ACCESS_KEY=%q\n' "$ak" "$sk"
    echo "export EF__AWS_REGION=us-east-1"
    [ -z "${BUCKET:-}" ] || printf 'export EF__AWS_S3_BACKUP_BUCKET=%q\n' "$BUCKET"
  } > "$DIR/s3.env"
  log "moto $("$DIR/venv/bin/python" -c 'import moto; print(moto.__version__)') ready on 127.0.0.1:$PORT (pid $pid, auth ${S3_AUTH:-1}${BUCKET:+, bucket $BUCKET})"
  cat "$DIR/s3.env"
}

cmd_stop() {
  if ! alive; then rm -f "$DIR/moto.pid"; log "not running"; return 0; fi
  local pid; pid="$(cat "$DIR/moto.pid")"
  kill "$pid"
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { log "pid $pid ignored SIGTERM, sending SIGKILL"; kill -9 "$pid"; }
  rm -f "$DIR/moto.pid" "$DIR/s3.env" "$DIR/clock"
  log "stopped (pid $pid)"
}

[ $# -ge 2 ] || die "usage: $0 start DIR PORT | stop DIR | clock DIR OFFSET"
CMD="$1"; DIR="$(realpath -m "$2")"; PORT="${3:-}"
case "$CMD" in
  start) [ $# -eq 3 ] || die "usage: start DIR PORT"; cmd_start ;;
  stop)  [ $# -eq 2 ] || die "usage: stop DIR"; cmd_stop ;;
  clock) [ $# -eq 3 ] || die "usage: clock DIR OFFSET"; [ -f "$DIR/clock" ] || die "server in $DIR not started with S3_FAKETIME=1"
         echo "$3" > "$DIR/clock.new" && mv "$DIR/clock.new" "$DIR/clock"; log "server clock: $3" ;;
  *) die "unknown command '$CMD'" ;;
esac
