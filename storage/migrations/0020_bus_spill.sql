-- Bus messages too large for a NOTIFY payload (server/bus/postgres.py): the notification
-- carries the id, receivers read the row. Short-lived: deleted after a few minutes, so
-- unlogged (nothing here survives a crash, nor needs to).
CREATE UNLOGGED TABLE bus_spill (
    id          bigserial PRIMARY KEY,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bus_spill_created ON bus_spill (created_at);
