-- A claim in one call. Claiming is the statement every daemon runs most often and the one
-- that serialises them (the per-kind advisory lock that keeps the account's concurrency
-- exact); as separate statements it held that lock for three round trips (the count, the
-- UPDATE, the COMMIT) and took the shared budget in a fourth transaction afterwards. Here the
-- lock is held only while the server runs the function.
--
-- Each statement in a plpgsql function takes a fresh snapshot (READ COMMITTED), so the count
-- below, run after the lock is granted, sees every claim committed by the lock's previous
-- holder: one statement could not do that (its snapshot predates the lock).
--
-- p_slots NULL: no concurrency limit (no lock, no count). p_lim NULL: no shared budget (the
-- caller takes none). Otherwise at most p_n due rows of p_kind, no more than the account's
-- free slots (anyone's submitting and running rows count) and no more than the budget of
-- scope p_kind grants (importlyd_take_budget, 0002) become this daemon's `submitting` rows.
-- Returns them, each with the grant's until_ms (importlyd_take_budget's) and whether the
-- account's slots are all taken now (`slots_full`); when no row was claimed, one row of NULLs
-- carrying those. How many were granted is how many rows came back.
CREATE FUNCTION importlyd_claim(p_kind text, p_n integer, p_slots integer, p_owner bigint,
                                p_lim integer, p_reserve integer, p_window_ms bigint)
RETURNS TABLE (claimed_id bigint, claimed_url text, claimed_kind text, claimed_options text,
               claimed_attempts bigint, until_ms bigint, slots_full boolean)
LANGUAGE plpgsql AS $$
DECLARE
    n integer := p_n;
    busy bigint := 0;
    ids bigint[];
    g integer;
    u bigint;
BEGIN
    IF p_slots IS NOT NULL THEN
        -- 1950113 = 0x1d_c1a1: this lock's class, apart from the metadata preflight's.
        PERFORM pg_advisory_xact_lock(1950113, hashtext(p_kind));
        SELECT count(*) INTO busy FROM imports AS i
        WHERE i.kind = p_kind AND i.state IN ('submitting', 'running');
        n := LEAST(n, p_slots - busy);
    END IF;
    IF n <= 0 THEN
        RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::bigint,
                            NULL::bigint, true;
        RETURN;
    END IF;
    -- Rows another daemon is claiming right now are skipped, not waited for; the ones
    -- locked here but not granted below are unlocked, untouched, when the call returns.
    SELECT array_agg(q.id ORDER BY q.next_attempt_at, q.id) INTO ids
    FROM (SELECT i.id, i.next_attempt_at FROM imports AS i
          WHERE i.state = 'pending' AND i.kind = p_kind AND i.next_attempt_at <= now()
          ORDER BY i.next_attempt_at, i.id LIMIT n
          FOR UPDATE SKIP LOCKED) AS q;
    IF ids IS NULL THEN
        RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::bigint,
                            NULL::bigint, false;
        RETURN;
    END IF;
    IF p_lim IS NULL THEN
        g := cardinality(ids);
    ELSE
        SELECT t.granted, t.until_ms INTO g, u
        FROM importlyd_take_budget(p_kind, cardinality(ids), p_lim, p_reserve, p_window_ms)
            AS t;
    END IF;
    IF g = 0 THEN
        RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::bigint,
                            u, false;
        RETURN;
    END IF;
    RETURN QUERY
        UPDATE imports AS i SET state = 'submitting', owner = p_owner, claimed_at = now(),
            updated_at = now()
        WHERE i.id = ANY (ids[1:g])
        RETURNING i.id, i.url, i.kind, i.options::text, i.attempts::bigint, u,
            p_slots IS NOT NULL AND busy + g >= p_slots;
END;
$$;
