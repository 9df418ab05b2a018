#!/usr/bin/env bash
# Runs once, when the postgres container starts on an empty data volume
# (/docker-entrypoint-initdb.d): one role and one database each for Airflow's metadata and
# MLflow's tracking store, with the passwords from docker/.env. To change a password later, use
# ALTER ROLE (or drop the postgres-data volume, losing both databases).
set -euo pipefail

for name in AIRFLOW_DB_PASSWORD MLFLOW_DB_PASSWORD; do
  value="${!name:-}"
  if [[ -z "$value" || "$value" == *change-me* ]]; then
    echo "postgres-init: $name is empty or still holds the 'change-me' placeholder of docker/env.template;" \
         "set a real value in docker/.env" >&2
    exit 1
  fi
done

create_role_and_database() {  # name password
  # psql variables (:"name", :'password') quote the values: no SQL is built by string pasting.
  psql --no-psqlrc -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
       --set=name="$1" --set=password="$2" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
SQL
}

create_role_and_database airflow "$AIRFLOW_DB_PASSWORD"
create_role_and_database mlflow "$MLFLOW_DB_PASSWORD"
