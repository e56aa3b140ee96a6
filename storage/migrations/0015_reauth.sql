-- Fresh re-authentication (issue 12, part 2): the data-rights actions (access summary,
-- export, deletion, account cancellation) need the password confirmed a short while ago.
-- `fresh_until` is set on every token of a family by a password login or a re-entry of the
-- password (POST /v1/me/reauth), and a refresh carries it to the new pair.
ALTER TABLE auth_tokens ADD COLUMN fresh_until timestamptz;
