# CI only: a stand-in for the official postgres:15-bookworm image, which
# cannot be pulled where CI runs, made from Debian's PostgreSQL 15 on a
# local debootstrap base (scripts/compose-test.sh). It keeps the parts of
# the official image's contract that docker-compose.yml relies on: the
# POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB variables, the scripts in
# /docker-entrypoint-initdb.d run once on an empty data directory, data in
# /var/lib/postgresql/data, pg_isready on PATH, and a fast shutdown on stop.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN mkdir -p /etc/postgresql-common \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql /docker-entrypoint-initdb.d \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 700 /var/lib/postgresql/data
COPY postgres-standin-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
