-- A device whose session was ended from elsewhere (the account's password changed on
-- another device) may not connect to the gateway until it logs in again.
ALTER TABLE devices ADD COLUMN signed_out_at timestamptz;
