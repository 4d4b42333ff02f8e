-- The external_ids of purged rows, so that feeding the same file again after `purge` does
-- not import (and pay for) them a second time: an INSERT of a row with such an external_id
-- is silently skipped, from any client, like the duplicate it would have been before the
-- purge. To really forget one: DELETE FROM purged_external_ids WHERE external_id = '...';
CREATE TABLE purged_external_ids (
    external_id TEXT PRIMARY KEY,
    purged_at   TEXT NOT NULL
) WITHOUT ROWID;

-- RAISE(IGNORE) skips this row and goes on with the statement: a plain INSERT inserts
-- nothing, `ON CONFLICT DO NOTHING ... RETURNING id` returns no id.
CREATE TRIGGER imports_skip_purged_external_id BEFORE INSERT ON imports
WHEN NEW.external_id IS NOT NULL
BEGIN
    SELECT RAISE(IGNORE)
    WHERE EXISTS (SELECT 1 FROM purged_external_ids WHERE external_id = NEW.external_id);
END;

-- The daemon running on this database (one at a time: `run` holds `<db>.lock`): written at
-- its start, its heartbeat refreshed with its periodic budget save (every 10 s), and
-- `stopped_at` set at a clean shutdown. `status` counts it as running while its heartbeat is
-- fresh; a daemon killed with kill -9 simply stops beating.
CREATE TABLE daemons (
    id           TEXT PRIMARY KEY,   -- host:pid:start (unix ms)
    host         TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    version      TEXT    NOT NULL,
    started_at   TEXT    NOT NULL,
    heartbeat_at TEXT    NOT NULL,
    stopped_at   TEXT
);
