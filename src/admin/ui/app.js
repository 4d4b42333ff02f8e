// importlyd dashboard. Vanilla JS, no build step. Reads /api/v1/* on this origin (the
// browser re-sends the Basic auth it holds), polls every POLL_MS while the tab is visible,
// and never renders anything but text nodes built from the API's answers (no innerHTML).
'use strict';

(function () {
  const POLL_MS = 3000;
  const STATES = ['pending', 'submitting', 'running', 'completed', 'failed', 'cancelled'];
  const PAGE = 50;
  const LATEST_FAILURES = 10;

  const $ = (id) => document.getElementById(id);

  // ---- talking to the API ----

  // Always against location.origin: a page opened as user:token@host (credentials in the URL) has a base
  // URL with credentials, and fetch refuses relative URLs resolved against it.
  function apiUrl(path) {
    return new URL(path, window.location.origin).toString();
  }

  async function request(path, opts) {
    const r = await fetch(apiUrl(path), Object.assign({
      credentials: 'same-origin',
      headers: { Accept: 'application/json' },
      cache: 'no-store',
    }, opts || {}));
    const type = r.headers.get('content-type') || '';
    const body = type.includes('json') ? await r.json().catch(() => null) : await r.text();
    if (!r.ok) {
      let msg = String(body || '').trim();
      if (body && typeof body === 'object') {
        // An action's report says why a row was left alone (409).
        const skipped = Array.isArray(body.skipped) && body.skipped[0];
        msg = body.error || (skipped && skipped.reason) || JSON.stringify(body);
      }
      const err = new Error(r.status + ' ' + (msg || r.statusText));
      err.status = r.status;
      throw err;
    }
    return body;
  }

  const get = (path) => request(path);
  const post = (path) => request(path, { method: 'POST' });

  // The rows answer as a bare list or as {rows, next...}: both are read.
  function rowsOf(body) {
    if (Array.isArray(body)) return body;
    if (body && Array.isArray(body.rows)) return body.rows;
    if (body && Array.isArray(body.items)) return body.items;
    return [];
  }
  function nextCursor(body, rows, limit) {
    if (body && !Array.isArray(body)) {
      for (const k of ['next_after', 'next', 'after', 'next_cursor']) {
        if (body[k] !== undefined) return body[k];
      }
    }
    return rows.length >= limit && rows.length ? rows[rows.length - 1].id : null;
  }

  // ---- rendering helpers (text only) ----

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  // A time in the browser's zone, the UTC form on hover.
  function timeEl(iso) {
    if (!iso) return document.createTextNode('–');
    const d = new Date(iso);
    if (isNaN(d)) return document.createTextNode(String(iso));
    const utc = d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
    return el('time', { datetime: d.toISOString(), title: utc }, d.toLocaleString());
  }
  function unixTimeEl(secs) {
    return timeEl(new Date(secs * 1000).toISOString());
  }

  function duration(secs) {
    secs = Math.max(0, Math.round(secs));
    const d = Math.floor(secs / 86400);
    const h = Math.floor((secs % 86400) / 3600);
    const m = Math.floor((secs % 3600) / 60);
    const s = secs % 60;
    if (d) return d + 'd ' + h + 'h';
    if (h) return h + 'h ' + String(m).padStart(2, '0') + 'm';
    if (m) return m + 'm ' + String(s).padStart(2, '0') + 's';
    return s + 's';
  }

  function badge(state) {
    return el('span', { class: 'badge ' + state, text: state });
  }

  function toast(text) {
    const t = $('toast');
    t.textContent = text;
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 6000);
  }

  // Every action asks first, in a <dialog> (keyboard: Esc cancels, focus starts on Cancel).
  function confirmAction(text) {
    const dlg = $('confirm');
    $('confirm-text').textContent = text;
    return new Promise((resolve) => {
      const done = () => {
        dlg.removeEventListener('close', done);
        resolve(dlg.returnValue === 'ok');
      };
      dlg.returnValue = '';
      dlg.addEventListener('close', done);
      dlg.showModal();
      $('confirm-no').focus();
    });
  }

  async function act(question, path, describe) {
    if (!(await confirmAction(question))) return null;
    try {
      const res = await post(path);
      toast(describe(res));
      refreshSoon();
      return res;
    } catch (e) {
      toast(e.status === 403 ? 'Refused (403): ' + e.message + '. Is an admin token configured?' : 'Failed: ' + e.message);
      return null;
    }
  }

  function countOf(res) {
    if (res && typeof res === 'object') {
      for (const k of ['retried', 'count', 'done', 'lifted']) {
        if (typeof res[k] === 'number') return res[k];
        if (Array.isArray(res[k])) return res[k].length;
      }
    }
    return null;
  }

  function retryRow(id) {
    return act('Retry row ' + id + '? It goes back to pending with a fresh attempt count.',
      '/api/v1/rows/' + encodeURIComponent(id) + '/retry',
      () => 'Row ' + id + ' is back to pending.');
  }
  function cancelRow(id) {
    return act('Cancel row ' + id + '? It will not be submitted.',
      '/api/v1/rows/' + encodeURIComponent(id) + '/cancel',
      () => 'Row ' + id + ' cancelled.');
  }

  // ---- live state ----

  let status = null;
  let view = 'overview';
  let timer = null;
  let inFlight = false;

  function setLive(text, bad) {
    const l = $('live');
    l.textContent = text;
    l.classList.toggle('err', !!bad);
  }

  // ---- overview ----

  function renderCounts(counts) {
    const box = clear($('counts'));
    for (const s of STATES) {
      const n = counts && counts[s] !== undefined ? counts[s] : 0;
      box.append(el('a', { class: 'card ' + s, href: '#rows?state=' + s, id: 'count-' + s, 'data-count': n },
        el('span', { class: 'n', text: Number(n).toLocaleString() }),
        el('span', { class: 's', text: s })));
    }
  }

  function renderPause(p) {
    const banner = $('pause');
    if (!p) { banner.hidden = true; return; }
    banner.hidden = false;
    $('pause-scope').textContent = p.scope || 'all';
    $('pause-reason').textContent = p.reason || '';
    clear($('pause-since')).append(timeEl(p.since));
    clear($('pause-probe')).append(timeEl(p.next_probe));
  }

  function renderEstimate(e) {
    const main = $('estimate');
    const detail = $('estimate-detail');
    detail.textContent = '';
    if (!e) { main.textContent = '–'; return; }
    if (e.unknown) {
      main.textContent = (e.ahead || 0).toLocaleString() + ' rows ahead; no estimate';
      detail.textContent = e.unknown;
    } else if (e.done_at === null || e.done_at === undefined) {
      main.textContent = 'nothing ahead';
    } else {
      clear(main).append('done around ', unixTimeEl(e.done_at), ' (in ' + duration(e.remaining) + ')');
      detail.textContent = (e.ahead || 0).toLocaleString() + ' rows ahead; limited by ' + e.limited_by;
    }
  }

  function renderBuckets(buckets) {
    const tb = clear($('buckets').tBodies[0]);
    for (const [name, b] of Object.entries(buckets || {})) {
      const used = Math.max(0, (b.limit || 0) - (b.remaining || 0));
      tb.append(el('tr', { 'data-bucket': name },
        el('th', { scope: 'row', text: name }),
        el('td', { class: 'used' }, used.toLocaleString() + ' / ' + Number(b.limit || 0).toLocaleString()),
        el('td', {}, el('span', { class: 'countdown', 'data-reset': b.reset, id: 'reset-' + name }, '–'), ' ',
          el('span', { class: 'note' }, '(', unixTimeEl(b.reset), ')')),
        el('td', {}, b.blocked_until ? timeEl(b.blocked_until) : '–'),
        el('td', { text: b.source || '' })));
    }
    tickCountdowns();
  }

  // The reset countdowns move every second between polls.
  function tickCountdowns() {
    const now = Date.now() / 1000;
    for (const c of document.querySelectorAll('.countdown[data-reset]')) {
      const left = Number(c.getAttribute('data-reset')) - now;
      c.textContent = left > 0 ? duration(left) : 'now';
    }
  }

  function renderDaemons(list) {
    const ul = clear($('daemons'));
    if (!list || !list.length) {
      ul.append(el('li', { class: 'err', text: 'no live daemon' }));
      return;
    }
    for (const d of list) {
      ul.append(el('li', {},
        'pid ' + d.pid + ' on ' + d.host + ' (v' + d.version + '), up since ', timeEl(d.started_at),
        ', last heartbeat ', timeEl(d.heartbeat_at), ', ' + d.in_flight + ' in flight'));
    }
  }

  function failureItem(r) {
    return el('li', { 'data-row': r.id },
      el('a', { href: '#row/' + r.id, text: '#' + r.id }),
      el('div', { class: 'what' },
        el('div', { class: 'url', text: r.url }),
        el('div', { class: 'err reason', text: r.last_error || '' })),
      el('div', { class: 'when' }, timeEl(r.updated_at)),
      el('button', { type: 'button', class: 'retry', 'data-id': r.id, onclick: () => retryRow(r.id) }, 'Retry'));
  }

  function renderChart(t) {
    const box = clear($('chart'));
    const note = $('chart-note');
    if (!t || !Array.isArray(t.completed)) { note.textContent = 'no data'; return; }
    const data = t.completed;
    const max = Math.max(1, ...data);
    const total = data.reduce((a, b) => a + b, 0);
    const W = 600, H = 120, pad = 14;
    const NS = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(NS, 'svg');
    svg.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', total + ' rows completed in the last hour, at most ' + max + ' in a minute');
    const bw = W / data.length;
    data.forEach((n, i) => {
      const h = (H - pad) * n / max;
      const r = document.createElementNS(NS, 'rect');
      r.setAttribute('class', 'bar');
      r.setAttribute('x', String(i * bw + 0.5));
      r.setAttribute('y', String(H - pad - h));
      r.setAttribute('width', String(Math.max(1, bw - 1)));
      r.setAttribute('height', String(h));
      const title = document.createElementNS(NS, 'title');
      title.textContent = n + ' completed in the minute from ' +
        new Date(t.minute_starts[i] + ':00Z').toLocaleTimeString();
      r.append(title);
      svg.append(r);
    });
    const axis = document.createElementNS(NS, 'line');
    axis.setAttribute('class', 'axis');
    axis.setAttribute('x1', '0'); axis.setAttribute('x2', String(W));
    axis.setAttribute('y1', String(H - pad)); axis.setAttribute('y2', String(H - pad));
    svg.append(axis);
    for (const [x, label, anchor] of [[2, '-60 min', 'start'], [W - 2, 'now', 'end']]) {
      const tx = document.createElementNS(NS, 'text');
      tx.setAttribute('x', String(x)); tx.setAttribute('y', String(H - 2));
      tx.setAttribute('text-anchor', anchor);
      tx.textContent = label;
      svg.append(tx);
    }
    box.append(svg);
    note.textContent = total.toLocaleString() + ' completed in the last hour (peak ' + max + '/min)';
  }

  async function loadOverview() {
    const [st, extra] = await Promise.all([
      get('/api/v1/status'),
      get('/ui/overview.json').catch(() => null),
    ]);
    status = st;
    renderCounts(st.counts);
    renderPause(st.paused);
    renderEstimate(st.estimate);
    renderBuckets(st.buckets);
    renderDaemons(st.daemons);
    const inUse = typeof st.in_flight === 'number' ? st.in_flight :
      (st.counts.running || 0) + (st.counts.submitting || 0);
    const slots = $('slots');
    if (st.slots && typeof st.slots === 'object' && st.slots.limit !== undefined) {
      slots.textContent = (st.slots.in_use ?? inUse) + ' / ' + st.slots.limit + ' in use';
    } else if (extra && extra.slots) {
      clear(slots).append(inUse + ' in use',
        el('span', { class: 'note block', text: 'limits: import ' + extra.slots.import +
          ', metadata ' + extra.slots.metadata + ' at once (configured; a concurrency 429 may lower them)' }));
    } else {
      slots.textContent = inUse + ' in use';
    }
    renderChart(extra && extra.throughput);
    const ul = clear($('latest-failures'));
    const rows = (extra && extra.latest_failures) || [];
    for (const r of rows.slice(0, LATEST_FAILURES)) ul.append(failureItem(r));
    if (!rows.length) ul.append(el('li', { class: 'note', text: 'no failed rows' }));
  }

  // ---- rows ----

  const rowsState = { state: '', q: '', after: null, next: null, trail: [] };

  function rowsQuery() {
    const p = new URLSearchParams();
    if (rowsState.state) p.set('state', rowsState.state);
    if (rowsState.q) p.set('q', rowsState.q);
    p.set('limit', String(PAGE));
    if (rowsState.after !== null) p.set('after', String(rowsState.after));
    return '/api/v1/rows?' + p.toString();
  }

  async function loadRows() {
    const body = await get(rowsQuery());
    const rows = rowsOf(body);
    rowsState.next = nextCursor(body, rows, PAGE);
    const tb = clear($('rows-table').tBodies[0]);
    for (const r of rows) {
      const note = r.state === 'completed' ? (r.media_url || '') : (r.last_error || '');
      tb.append(el('tr', { 'data-row': r.id },
        el('td', {}, el('a', { href: '#row/' + r.id, text: String(r.id) })),
        el('td', {}, badge(r.state)),
        el('td', { text: String(r.attempts) }),
        el('td', {}, timeEl(r.updated_at)),
        el('td', { class: 'url' }, r.url, note ? el('div', { class: r.state === 'completed' ? 'note' : 'err', text: note }) : null)));
    }
    if (!rows.length) tb.append(el('tr', {}, el('td', { colspan: 5, class: 'note', text: 'no rows' })));
    $('rows-next').disabled = rowsState.next === null || rowsState.next === undefined;
    $('rows-first').disabled = rowsState.after === null;
    $('rows-prev').disabled = rowsState.trail.length === 0;
  }

  // ---- one row ----

  let rowId = null;

  async function loadRow() {
    const body = await get('/api/v1/rows/' + encodeURIComponent(rowId));
    const row = body.row || body;
    const attempts = body.attempts || [];
    $('row-id').textContent = row.id;
    $('row-retry').disabled = row.state !== 'failed';
    $('row-cancel').disabled = row.state !== 'pending';
    const dl = clear($('row-fields'));
    for (const [k, v] of Object.entries(row)) {
      dl.append(el('dt', { text: k }));
      let val;
      if (v === null || v === undefined) val = '–';
      else if (typeof v === 'object') val = JSON.stringify(v);
      else if (/_at$/.test(k)) val = timeEl(v);
      else val = String(v);
      dl.append(el('dd', { 'data-field': k }, val));
    }
    const ol = clear($('row-attempts'));
    for (const a of attempts) {
      const what = a.http_status !== null && a.http_status !== undefined ? 'HTTP ' + a.http_status : (a.error || '');
      ol.append(el('li', {},
        el('div', {}, timeEl(a.started_at), ' ', (a.method || '') + ' ' + (a.endpoint || '') + ' → ',
          el('strong', { text: what }), ' (' + (a.outcome || '') + ', try ' + a.attempt + ')'),
        a.job_id ? el('div', { class: 'note', text: 'job id ' + a.job_id }) : null,
        a.rate_limit ? el('div', { class: 'note', text: 'rate headers: ' + (typeof a.rate_limit === 'string' ? a.rate_limit : JSON.stringify(a.rate_limit)) }) : null,
        a.response_body ? el('pre', { text: a.response_body + (a.body_truncated ? ' …(truncated)' : '') }) : null));
    }
    if (!attempts.length) ol.append(el('li', { class: 'note', text: 'no logged exchanges' }));
  }

  async function copyTicket(format) {
    try {
      const body = await get('/api/v1/rows/' + encodeURIComponent(rowId) + '/ticket?format=' + format);
      const text = typeof body === 'string' ? body : (body.ticket || body.text || JSON.stringify(body, null, 2));
      const area = $('row-ticket');
      area.value = text;
      try {
        await navigator.clipboard.writeText(text);
        toast('Ticket (' + format + ') copied.');
      } catch (_) {
        // No clipboard outside a secure context: leave it selected in the box to copy.
        area.focus();
        area.select();
        toast('Ticket (' + format + ') is in the box below: press Ctrl+C to copy.');
      }
    } catch (e) {
      toast('Ticket failed: ' + e.message);
    }
  }

  // ---- failures by reason ----

  function retryGroup(reason) {
    return act('Retry every failed row whose URL, external id or error contains "' + reason + '"?',
      '/api/v1/retry?state=failed&q=' + encodeURIComponent(reason),
      (res) => {
        const n = countOf(res);
        const more = res && res.cap && n !== null && n >= res.cap ? ' (the cap of one call: press again for more)' : '';
        return (n === null ? 'Rows' : n + ' rows') + ' back to pending' + more + '.';
      });
  }

  async function loadFailures() {
    const body = await get('/api/v1/failures');
    const groups = Array.isArray(body) ? body : [];
    const ul = clear($('failure-groups'));
    for (const g of groups) {
      ul.append(el('li', { 'data-reason': g.reason || '' },
        el('strong', { text: Number(g.rows).toLocaleString() + '×' }),
        el('span', { class: 'reason err', text: g.reason || '(no reason recorded)' }),
        el('span', { class: 'note' }, 'e.g. ', el('a', { href: '#row/' + g.latest_id, text: '#' + g.latest_id }),
          ', last ', timeEl(g.latest_at)),
        g.reason ? el('button', { type: 'button', class: 'retry-group', onclick: () => retryGroup(g.reason) }, 'Retry this group') : null));
    }
    if (!groups.length) ul.append(el('li', { class: 'note', text: 'no failed rows' }));
    $('failures-note').textContent = groups.length >= body.limit ?
      'The ' + body.limit + ' largest groups.' : '';
  }

  // ---- audit ----

  async function loadAudit() {
    const body = await get('/api/v1/audit');
    const list = Array.isArray(body) ? body : (body.entries || body.audit || body.rows || []);
    const tb = clear($('audit-table').tBodies[0]);
    for (const a of list) {
      tb.append(el('tr', {},
        el('td', {}, timeEl(a.at)),
        el('td', { text: a.action }),
        el('td', { text: a.target === null || a.target === undefined ? '' : String(a.target) }),
        el('td', { text: a.detail || '' }),
        el('td', { text: a.source || '' }),
        el('td', { class: a.ok ? '' : 'err', text: a.ok ? 'ok' : 'failed' })));
    }
    if (!list.length) tb.append(el('tr', {}, el('td', { colspan: 6, class: 'note', text: 'no actions yet' })));
  }

  // ---- routing and polling ----

  const loaders = { overview: loadOverview, rows: loadRows, row: loadRow, failures: loadFailures, audit: loadAudit };

  function route() {
    const h = window.location.hash.replace(/^#/, '') || 'overview';
    const [path, query] = h.split('?');
    if (path.startsWith('row/')) {
      view = 'row';
      rowId = path.slice(4);
    } else {
      view = loaders[path] ? path : 'overview';
    }
    if (view === 'rows') {
      const p = new URLSearchParams(query || '');
      rowsState.state = p.get('state') || '';
      rowsState.q = p.get('q') || '';
      rowsState.after = null;
      rowsState.trail = [];
      $('rows-state').value = rowsState.state;
      $('rows-q').value = rowsState.q;
    }
    for (const s of document.querySelectorAll('[data-section]')) s.hidden = s.getAttribute('data-section') !== view;
    for (const a of document.querySelectorAll('nav a[data-view]')) {
      if (a.getAttribute('data-view') === (view === 'row' ? 'rows' : view)) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    refreshSoon();
  }

  async function refresh() {
    clearTimeout(timer);
    timer = null;
    if (document.visibilityState === 'hidden') return; // resumed by visibilitychange
    if (!inFlight) {
      inFlight = true;
      try {
        // The pause banner is on every view: keep the status fresh everywhere.
        if (view !== 'overview') {
          const st = await get('/api/v1/status');
          status = st;
          renderPause(st.paused);
        }
        await loaders[view]();
        setLive('updated ' + new Date().toLocaleTimeString());
      } catch (e) {
        setLive('update failed: ' + e.message, true);
      } finally {
        inFlight = false;
      }
    }
    timer = setTimeout(refresh, POLL_MS);
  }

  function refreshSoon() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 0);
  }

  function init() {
    window.addEventListener('hashchange', route);
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') refreshSoon();
      else { clearTimeout(timer); timer = null; setLive('paused while hidden'); }
    });
    setInterval(tickCountdowns, 1000);

    $('resume').addEventListener('click', () => act(
      'Lift the pause now? The daemon sends its next request at once; if the cause is not fixed it pauses again.',
      '/api/v1/resume', () => 'Pause lifted; the daemon resumes within its queue interval.'));
    $('row-retry').addEventListener('click', () => retryRow(rowId));
    $('row-cancel').addEventListener('click', () => cancelRow(rowId));
    $('row-ticket-text').addEventListener('click', () => copyTicket('text'));
    $('row-ticket-md').addEventListener('click', () => copyTicket('markdown'));
    $('rows-filter').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const p = new URLSearchParams();
      const s = $('rows-state').value;
      const q = $('rows-q').value.trim();
      if (s) p.set('state', s);
      if (q) p.set('q', q);
      const h = '#rows' + (p.toString() ? '?' + p.toString() : '');
      if (window.location.hash === h) route(); else window.location.hash = h;
    });
    $('rows-next').addEventListener('click', () => {
      if (rowsState.next === null || rowsState.next === undefined) return;
      rowsState.trail.push(rowsState.after);
      rowsState.after = rowsState.next;
      refreshSoon();
    });
    $('rows-prev').addEventListener('click', () => {
      if (!rowsState.trail.length) return;
      rowsState.after = rowsState.trail.pop();
      refreshSoon();
    });
    $('rows-first').addEventListener('click', () => {
      rowsState.after = null;
      rowsState.trail = [];
      refreshSoon();
    });
    route();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
