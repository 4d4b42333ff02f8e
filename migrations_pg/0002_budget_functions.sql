-- The shared rate budgets' two operations, each one call and one row lock, so that any
-- number of daemons take from one account's budget without ever granting the same request
-- twice. The row (`budgets`, 0001) is locked for the few microseconds of the function; no
-- transaction spans an HTTP call. Times are the database's (now()), never a daemon's.

-- Takes up to p_n requests from p_scope's window. The first daemon to need the row creates
-- it from its config (the guess the server's headers later replace). An ended window rolls
-- forward by whole windows (aligned, as Importly's are) and starts empty. A 429's block
-- grants nothing until it ends. Returns how many were granted and, when fewer than asked,
-- when more may be (unix ms): the window's end or the block's, whichever is later.
CREATE FUNCTION importlyd_take_budget(p_scope text, p_n integer, p_lim integer,
                                      p_reserve integer, p_window_ms bigint)
RETURNS TABLE (granted integer, until_ms bigint)
LANGUAGE plpgsql AS $$
DECLARE
    b budgets%ROWTYPE;
    t timestamptz := now();
    g integer;
BEGIN
    INSERT INTO budgets (scope, lim, used, window_ms, window_end, source, updated_at)
    VALUES (p_scope, p_lim, 0, p_window_ms, t + p_window_ms * interval '1 millisecond',
            'config', t)
    ON CONFLICT (scope) DO NOTHING;
    SELECT * INTO b FROM budgets WHERE scope = p_scope FOR UPDATE;
    IF b.window_end <= t THEN
        b.window_end := b.window_end + b.window_ms * interval '1 millisecond'
            * (floor(extract(epoch FROM (t - b.window_end)) * 1000 / b.window_ms) + 1);
        b.used := 0;
    END IF;
    IF b.blocked_until IS NOT NULL AND b.blocked_until > t THEN
        g := 0;
    ELSE
        g := LEAST(p_n, GREATEST(b.lim - p_reserve - b.used, 0));
    END IF;
    UPDATE budgets SET used = b.used + g, window_end = b.window_end, updated_at = t
    WHERE scope = p_scope;
    RETURN QUERY SELECT g,
        CASE WHEN g < p_n THEN
            (extract(epoch FROM GREATEST(b.window_end, coalesce(b.blocked_until, b.window_end)))
             * 1000)::bigint
        END;
END;
$$;

-- Corrects p_scope from an answer's headers (the server is the truth about the budget):
-- an answer about the window we count in raises `used` to what the server has seen (never
-- lowers it: our own requests still in flight are not in its count yet); an answer about
-- another current window (the config's guess was wrong, or the plan changed) replaces ours;
-- an answer about a window already over is stale and ignored. A 429's block only lengthens.
-- Any of limit, remaining and reset may be NULL (an answer without headers, a bare 429).
CREATE FUNCTION importlyd_observe_budget(p_scope text, p_limit integer, p_remaining integer,
                                         p_reset timestamptz, p_window_ms bigint,
                                         p_blocked_until timestamptz)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    b budgets%ROWTYPE;
    t timestamptz := now();
    seen_used integer := GREATEST(p_limit - p_remaining, 0);
BEGIN
    SELECT * INTO b FROM budgets WHERE scope = p_scope FOR UPDATE;
    IF NOT FOUND THEN
        IF p_reset IS NULL OR p_limit IS NULL OR p_remaining IS NULL THEN
            RETURN;  -- a bare 429 before any budget row: the next take creates it
        END IF;
        INSERT INTO budgets (scope, lim, used, window_ms, window_end, blocked_until, source,
                             updated_at)
        VALUES (p_scope, p_limit, seen_used,
                coalesce(p_window_ms,
                         GREATEST((extract(epoch FROM (p_reset - t)) * 1000)::bigint, 1000)),
                p_reset, p_blocked_until, 'server', t)
        ON CONFLICT (scope) DO NOTHING;
        RETURN;
    END IF;
    IF p_reset > t AND p_limit IS NOT NULL AND p_remaining IS NOT NULL THEN
        IF abs(extract(epoch FROM (p_reset - b.window_end))) <= 1 AND b.source = 'server' THEN
            UPDATE budgets SET lim = p_limit, used = GREATEST(b.used, seen_used),
                window_ms = coalesce(p_window_ms, b.window_ms), updated_at = t
            WHERE scope = p_scope;
        ELSE
            UPDATE budgets SET lim = p_limit, window_end = p_reset,
                used = CASE WHEN b.window_end > t AND b.source = 'server'
                            THEN GREATEST(b.used, seen_used) ELSE seen_used END,
                window_ms = coalesce(p_window_ms, b.window_ms), source = 'server',
                updated_at = t
            WHERE scope = p_scope;
        END IF;
    END IF;
    IF p_blocked_until IS NOT NULL THEN
        UPDATE budgets SET blocked_until = GREATEST(coalesce(blocked_until, p_blocked_until),
                                                    p_blocked_until)
        WHERE scope = p_scope;
    END IF;
END;
$$;
