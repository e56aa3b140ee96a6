-- Deleting an organization (issue 12, part 3): its owner cancels it after exporting its
-- data; every account is cancelled at once and the sweeper's `cancelled_orgs` rule purges
-- the organization's own rows once the accounts are gone (storage/org_cancellation.py).
ALTER TABLE orgs ADD COLUMN cancelled_at timestamptz;
CREATE INDEX orgs_cancelled ON orgs (cancelled_at) WHERE cancelled_at IS NOT NULL;
