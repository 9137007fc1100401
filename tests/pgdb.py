"""A scratch PostgreSQL database on 127.0.0.1:5432 for the server tests and bench_limits.

The machines that run cook's tests have PostgreSQL there with trust auth (user `postgres` or `root`). `probe()`
finds a user that may create databases, or says why there is none; `scratch_database()` makes a uniquely named
database and drops it on the way out, whatever happened, after ending the connections a server left behind.
asyncpg ships with Prefect (its PostgreSQL driver), so nothing else is needed.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

HOST, PORT = "127.0.0.1", 5432
USERS = ("postgres", "root")
MAINTENANCE_DBS = ("postgres", "test")  # a database to connect to while creating or dropping another


@dataclass(frozen=True)
class Server:
    """A PostgreSQL server that answered, and a user (with its maintenance database) that may create databases."""

    user: str
    maintenance_db: str
    version: str

    def url(self, database: str) -> str:
        """The Prefect connection URL of `database` (trust auth: no password in it)."""
        return f"postgresql+asyncpg://{self.user}@{HOST}:{PORT}/{database}"


async def _connect(user: str, database: str):
    import asyncpg

    return await asyncpg.connect(host=HOST, port=PORT, user=user, database=database, timeout=5)


async def _probe() -> tuple[Server | None, str]:
    import asyncpg

    why = []
    for user in USERS:
        for db in MAINTENANCE_DBS:
            try:
                conn = await _connect(user, db)
            except (OSError, asyncio.TimeoutError) as e:  # nothing listens, or it does not answer
                return None, f"no PostgreSQL answers on {HOST}:{PORT} ({type(e).__name__}: {e})"
            except asyncpg.PostgresError as e:  # no such role or database, or a password wanted
                why.append(f"{user}@{db}: {e}")
                continue
            try:
                may_create = await conn.fetchval(
                    "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
                version = await conn.fetchval("SHOW server_version")
            finally:
                await conn.close()
            if may_create:
                return Server(user, db, version), ""
            why.append(f"{user}: may not create databases")
            break
    return None, (f"PostgreSQL on {HOST}:{PORT} lets no user in without a password who may create databases "
                  f"({'; '.join(why)})")


def probe() -> tuple[Server | None, str]:
    """(the server, "") when PostgreSQL answers with trust auth for a user who may create databases;
    (None, the reason) otherwise."""
    return asyncio.run(_probe())


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _create(server: Server, name: str) -> None:
    conn = await _connect(server.user, server.maintenance_db)
    try:
        await conn.execute(f"CREATE DATABASE {_quote(name)}")
    finally:
        await conn.close()


async def _drop(server: Server, name: str) -> None:
    conn = await _connect(server.user, server.maintenance_db)
    try:  # a server killed mid-request can leave its pool's connections open; DROP refuses while any remain
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 "
                           "AND pid <> pg_backend_pid()", name)
        await conn.execute(f"DROP DATABASE IF EXISTS {_quote(name)}")
    finally:
        await conn.close()


def create_database(server: Server, name: str) -> None:
    asyncio.run(_create(server, name))


def drop_database(server: Server, name: str) -> None:
    """Drop `name` if it exists, ending its connections first."""
    asyncio.run(_drop(server, name))


def exists(server: Server, name: str) -> bool:
    async def go():
        conn = await _connect(server.user, server.maintenance_db)
        try:
            return await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name) == 1
        finally:
            await conn.close()

    return asyncio.run(go())


def fetchval(server: Server, database: str, query: str, *args):
    """One value from a query on `database` (to look at what a Prefect server wrote there)."""
    async def go():
        conn = await _connect(server.user, database)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


def unique_name(prefix: str) -> str:
    """A database name no other test or run uses: prefix, pid, random hex (lower case: no quoting needed in shells)."""
    return f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"


@contextmanager
def scratch_database(server: Server, prefix: str = "cook_test", create: bool = True) -> Iterator[str]:
    """A uniquely named database (created here unless `create` is false: the caller creates it under that name),
    dropped on exit, even after a failure."""
    name = unique_name(prefix)
    try:
        if create:
            create_database(server, name)
        yield name
    finally:
        drop_database(server, name)
