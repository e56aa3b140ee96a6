-- Attendance: the sites an organization defines (org data: where its offices are), and the
-- one-shot check-in/out records. A record holds the outcome the server decided, never the
-- position it was decided from: there is no column for coordinates, by design.

CREATE TABLE attendance_sites (
    id             uuid PRIMARY KEY,
    org_id         uuid NOT NULL REFERENCES orgs (id),
    department_id  uuid,  -- NULL: the whole organization; else that department's subtree
    name           text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('circle', 'polygon')),
    -- circle: centre and radius
    center_lat     double precision CHECK (center_lat BETWEEN -90 AND 90),
    center_lon     double precision CHECK (center_lon BETWEEN -180 AND 180),
    radius_m       double precision CHECK (radius_m BETWEEN 1 AND 50000),
    -- polygon: vertex i is (vertex_lat[i], vertex_lon[i]), in order, not closed
    vertex_lat     double precision[],
    vertex_lon     double precision[],
    created_by     uuid NOT NULL REFERENCES accounts (id),
    created_at     timestamptz NOT NULL,
    deleted_at     timestamptz,  -- kept for the records that name it
    CONSTRAINT attendance_sites_org_id_key UNIQUE (org_id, id),
    CONSTRAINT attendance_sites_department_fk FOREIGN KEY (org_id, department_id)
        REFERENCES departments (org_id, id),
    CONSTRAINT attendance_sites_shape_check CHECK (
        (kind = 'circle'
            AND center_lat IS NOT NULL AND center_lon IS NOT NULL AND radius_m IS NOT NULL
            AND vertex_lat IS NULL AND vertex_lon IS NULL)
        OR (kind = 'polygon'
            AND center_lat IS NULL AND center_lon IS NULL AND radius_m IS NULL
            AND cardinality(vertex_lat) BETWEEN 3 AND 100
            AND cardinality(vertex_lon) = cardinality(vertex_lat)
            AND -90 <= ALL (vertex_lat) AND 90 >= ALL (vertex_lat)
            AND -180 <= ALL (vertex_lon) AND 180 >= ALL (vertex_lon)))
);
-- A live site's name is unique in its organization.
CREATE UNIQUE INDEX attendance_sites_name_unique ON attendance_sites (org_id, lower(name))
    WHERE deleted_at IS NULL;

-- Append-only: one row per check-in or check-out.
CREATE TABLE attendance_records (
    id          bigserial PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES orgs (id),
    account_id  uuid NOT NULL REFERENCES accounts (id),
    device_id   uuid NOT NULL REFERENCES devices (id),
    action      text NOT NULL CHECK (action IN ('in', 'out')),
    at          timestamptz NOT NULL,
    site_id     uuid,  -- the site the position was inside; NULL when outside every site
    outcome     text NOT NULL CHECK (outcome IN ('inside', 'outside')),
    CONSTRAINT attendance_records_site_fk FOREIGN KEY (org_id, site_id)
        REFERENCES attendance_sites (org_id, id),
    CONSTRAINT attendance_records_site_check CHECK ((outcome = 'inside') = (site_id IS NOT NULL))
);
CREATE INDEX attendance_records_account ON attendance_records (account_id, id);
CREATE INDEX attendance_records_org ON attendance_records (org_id, id);
