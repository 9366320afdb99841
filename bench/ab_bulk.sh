#!/bin/bash
# A/B of the bulk commands between two checkouts, alternated, on SQLite and PostgreSQL (127.0.0.1:5432,
# database cvm_ab_PID, dropped and made again each time), 100,000 serials, process start included.
#
#   git worktree add --detach /tmp/before b5793ac && ln -s "$PWD/.venv" /tmp/before/.venv
#   bench/ab_bulk.sh /tmp/before . [ROUNDS]
#
# Prints one line per round, tree and database: the seconds of import_serials and issue_tokens, and the
# one-minute load average after them.
set -euo pipefail
refuse() { echo "ab_bulk.sh: $1 (usage: bench/ab_bulk.sh BEFORE AFTER [ROUNDS])" >&2; exit 2; }
[ $# -ge 2 ] && [ $# -le 3 ] || refuse "expected two checkouts and an optional number of rounds"
for tree in "$1" "$2"; do
  [ -f "$tree/manage.py" ] && [ -x "$tree/.venv/bin/python" ] || refuse "$tree is not a checkout with its .venv"
done
rounds=${3:-2}
[[ $rounds =~ ^[1-9][0-9]*$ ]] || refuse "ROUNDS must be a whole number from 1, not '$rounds'"
before=$(cd "$1" && pwd)
after=$(cd "$2" && pwd)
work=$(mktemp -d)
database=cvm_ab_$$
trap 'rm -rf "$work"; psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" 2> /dev/null || true' EXIT
export SECRET_KEY=bench-secret-key-0123456789abcdefghijklmnopqrstuv
export CVM_TOKEN_HMAC_KEY=bench-token-key-0123456789abcdefghijklmnopqr
export CVM_AUDIT_HMAC_KEY=bench-audit-key-0123456789abcdefghijklmnopqr
export ALLOWED_HOSTS=127.0.0.1 LOG_LEVEL=WARNING
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1
python3 -c "
print('serial,product')
for i in range(100000): print(f'AB-{i:06d},bench')" > "$work/serials.csv"
seconds() { local start; start=$(date +%s.%N); "$@" > /dev/null; echo "$(date +%s.%N) - $start" | bc; }
for round in $(seq "$rounds"); do
  for tree in "$before" "$after"; do
    cd "$tree"
    for db in sqlite postgresql; do
      if [ $db = sqlite ]; then
        export DATABASE_URL="sqlite:///$work/ab.sqlite3"
        rm -f "$work"/ab.sqlite3*
      else
        export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$database
        psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" \
          -c "CREATE DATABASE $database" 2> /dev/null
      fi
      .venv/bin/python manage.py migrate -v0
      import=$(seconds .venv/bin/python manage.py import_serials "$work/serials.csv")
      tokens=$(seconds .venv/bin/python manage.py issue_tokens --all-registered --out "$work/tokens-$round-$db-$RANDOM.csv")
      echo "round $round $tree $db: import_serials ${import} s, issue_tokens ${tokens} s, load $(cut -d' ' -f1 /proc/loadavg)"
    done
  done
done
