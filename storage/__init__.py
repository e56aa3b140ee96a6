"""PostgreSQL through asyncpg, reached from trio through one bridge (see `storage.bridge`)."""
