-- Uploaded files: metadata here, bytes on disk under <data_dir>/files/, addressed by id.

CREATE TABLE files (
    id               uuid PRIMARY KEY,
    org_id           uuid NOT NULL REFERENCES orgs (id),
    conversation_id  uuid NOT NULL REFERENCES conversations (id),
    uploader_id      uuid NOT NULL REFERENCES accounts (id),
    name             text NOT NULL,
    mime             text NOT NULL,
    size             bigint NOT NULL CHECK (size >= 0),
    sha256           bytea NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX files_conversation ON files (conversation_id);
CREATE INDEX files_uploader ON files (uploader_id);
