#!/usr/bin/env bash
# Submit a study to a running Ray cluster as a Ray job:
#
#   launch/ray_submit.sh CONFIG [key=value ...]      runs `vlpdist study CONFIG key=value ...`
#   launch/ray_submit.sh status CONFIG               runs `vlpdist study status CONFIG`
#
# The job API's address: RAY_API_SERVER_ADDRESS, else RAY_ADDRESS (an http address or the GCS
# address), else http://127.0.0.1:8265 - the same precedence as Ray's job CLI, which lets
# these variables override --address. The repository is uploaded as the job's working dir.
#
# Whichever S3 settings this shell has (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_REGION: vlpdist.study.defaults.S3_ENV), and RAY_AUTH_MODE, go to
# the study driver as the job's env_vars, through a file only this user can read (an argv
# would show them to `ps`); values are never printed. They override the nodes' own settings,
# so submitting from the host to docker compose's cluster needs AWS_ENDPOINT_URL unset or set
# to the address the nodes see (http://minio:9000).
set -euo pipefail

if (($# < 1)); then
    echo "usage: $0 CONFIG [key=value ...] | $0 status CONFIG" >&2
    exit 2
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -x $REPO/.venv/bin/python ]]; then
    PATH="$REPO/.venv/bin:$PATH"
    PY=$REPO/.venv/bin/python
else
    PY=python3
fi
address=${RAY_API_SERVER_ADDRESS:-${RAY_ADDRESS:-http://127.0.0.1:8265}}
carry=(AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION RAY_AUTH_MODE)

runtime_env=$(mktemp "${TMPDIR:-/tmp}/vlpdist-runtime-env.XXXXXX")
trap 'rm -f "$runtime_env"' EXIT
chmod 600 "$runtime_env"
# JSON is YAML; json.dump quotes any value correctly. The state dir of launch/local_cluster.sh
# holds credentials and .git is large: neither belongs in the uploaded working dir.
"$PY" - "$runtime_env" "${carry[@]}" <<'EOF'
import json
import os
import sys

path, names = sys.argv[1], sys.argv[2:]
env_vars = {name: os.environ[name] for name in names if name in os.environ}
with open(path, "w") as f:
    json.dump({"env_vars": env_vars, "excludes": ["/.git/", "/.cluster/"]}, f)
print("job env:", " ".join(env_vars) or "(none: the nodes' own S3 settings apply)", file=sys.stderr)
EOF

ray job submit --address "$address" --working-dir "$REPO" --runtime-env "$runtime_env" \
    -- vlpdist study "$@"
