-- Purging a cancelled account (storage/purge.py) takes its id out of the consent scope of
-- other people's messages that named it: this index finds those without reading every
-- message.
CREATE INDEX messages_scope ON messages USING gin (scope) WHERE scope IS NOT NULL;
