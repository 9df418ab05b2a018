#!/usr/bin/env bash
# One-shot set-up before the Airflow services start (compose service `airflow-init`):
#   1. refuse to start with a credential still at its env.template placeholder;
#   2. migrate the metadata database (idempotent: a no-op when it is up to date);
#   3. write the admin's password where the simple auth manager reads it
#      ([core] simple_auth_manager_passwords_file), so the UI login is the one in docker/.env.
set -euo pipefail

for name in AIRFLOW_ADMIN_PASSWORD AIRFLOW__CORE__FERNET_KEY AIRFLOW__API_AUTH__JWT_SECRET \
            AIRFLOW__API__SECRET_KEY AIRFLOW__DATABASE__SQL_ALCHEMY_CONN; do
  value="${!name:-}"
  if [[ -z "$value" || "$value" == *change-me* ]]; then
    echo "airflow-init: $name is empty or still holds the 'change-me' placeholder of docker/env.template;" \
         "set a real value in docker/.env" >&2
    exit 1
  fi
done

airflow db migrate

python - <<'PY'
import json
import os
import pathlib

path = pathlib.Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
path.parent.mkdir(parents=True, exist_ok=True)
username = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")[0].split(":")[0]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as file:
    json.dump({username: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, file)
    file.write("\n")
print(f"airflow-init: password of Airflow user {username!r} written to {path}")
PY
