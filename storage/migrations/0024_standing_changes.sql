-- When an account's or a device's standing (what decides whether a device may connect:
-- storage/devices.py `_credentials`) last changed, stamped by the database itself, so that
-- every process can find the devices whose standing changed since it last looked, whether
-- or not the bus told it (server/gateway/standing.py, the safety net under the bus).
ALTER TABLE accounts ADD COLUMN standing_changed_at timestamptz;
ALTER TABLE devices ADD COLUMN standing_changed_at timestamptz;

CREATE FUNCTION stamp_standing_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.standing_changed_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER accounts_standing_changed BEFORE UPDATE ON accounts
    FOR EACH ROW
    WHEN (NEW.status IS DISTINCT FROM OLD.status
          OR NEW.password_change_required IS DISTINCT FROM OLD.password_change_required)
    EXECUTE FUNCTION stamp_standing_change();
CREATE TRIGGER devices_standing_changed BEFORE UPDATE ON devices
    FOR EACH ROW
    WHEN (NEW.revoked_at IS DISTINCT FROM OLD.revoked_at
          OR NEW.signed_out_at IS DISTINCT FROM OLD.signed_out_at)
    EXECUTE FUNCTION stamp_standing_change();

CREATE INDEX accounts_standing_changed ON accounts (standing_changed_at)
    WHERE standing_changed_at IS NOT NULL;
CREATE INDEX devices_standing_changed ON devices (standing_changed_at)
    WHERE standing_changed_at IS NOT NULL;
