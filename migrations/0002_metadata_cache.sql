-- Completed metadata per media URL, so a second request within metadata.cache_ttl (and the
-- credit guard's preflight) needs no API call.
CREATE TABLE metadata_cache (
    url         TEXT PRIMARY KEY,
    title       TEXT,
    duration    REAL,
    formats     TEXT    NOT NULL DEFAULT '[]',  -- availableFormats as JSON, costInCredits included
    data        TEXT    NOT NULL,               -- the whole final `data` object
    job_id      TEXT,
    fetched_at  TEXT    NOT NULL
);
