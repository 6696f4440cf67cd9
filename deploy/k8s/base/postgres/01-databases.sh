#!/bin/sh
# One database per service, each owned by a role of its own that can
# connect to that database only (least privilege: order-service cannot
# read password hashes). Run by the postgres image when its volume is
# first initialised (docker-entrypoint-initdb.d), with the passwords
# from the environment. Each service migrates its own schema at
# start-up. Generated from deploy/services.tsv by scripts/gen-deploy.py.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v user_service_password="$USER_SERVICE_DB_PASSWORD" \
    -v inventory_service_password="$INVENTORY_SERVICE_DB_PASSWORD" \
    -v order_service_password="$ORDER_SERVICE_DB_PASSWORD" \
    <<'SQL'
CREATE ROLE user_service LOGIN PASSWORD :'user_service_password';
CREATE DATABASE users OWNER user_service;
REVOKE ALL ON DATABASE users FROM PUBLIC;
CREATE ROLE inventory_service LOGIN PASSWORD :'inventory_service_password';
CREATE DATABASE inventory OWNER inventory_service;
REVOKE ALL ON DATABASE inventory FROM PUBLIC;
CREATE ROLE order_service LOGIN PASSWORD :'order_service_password';
CREATE DATABASE orders OWNER order_service;
REVOKE ALL ON DATABASE orders FROM PUBLIC;
SQL
