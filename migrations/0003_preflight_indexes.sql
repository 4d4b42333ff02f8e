-- The credit guard looks up "the newest metadata row for this URL" on every preflight; without
-- an index that is a scan of the whole queue. Partial, so plain import rows (the bulk of any
-- queue) cost nothing extra at INSERT.
CREATE INDEX imports_metadata_by_url ON imports (url, id) WHERE kind = 'metadata';

-- Import rows snoozed while their URL's preflight metadata is fetched, so the end of that
-- metadata job can make them due at once instead of after their snooze. The WHERE must match
-- store::metadata::WAKE_WAITERS (and MetadataRow::WAITING) word for word.
CREATE INDEX imports_waiting_for_preflight ON imports (url)
    WHERE state = 'pending' AND last_error = 'waiting for preflight metadata';
