-- One database per service, created when the PostgreSQL volume is first
-- initialised (docker-entrypoint-initdb.d). Each service migrates its own
-- schema at start-up. Generated from deploy/services.tsv by
-- scripts/gen-deploy.py.
CREATE DATABASE users;
CREATE DATABASE orders;
