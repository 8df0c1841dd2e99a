// agentguard web view. Plain JavaScript, no libraries: every piece of data
// reaches the page through textContent, never as markup.
'use strict';

const state = { me: null, csrf: null, stream: null, heldTimer: null, viewTimer: null };
const main = () => document.getElementById('main');

// ---- small DOM helpers ----------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function badge(text, cls) {
  return el('span', { class: 'badge ' + (cls || text || '') }, text || '–');
}

function fields(pairs) {
  const dl = el('dl', { class: 'fields' });
  for (const [k, v, mono] of pairs) {
    dl.append(el('dt', {}, k), el('dd', { class: mono ? 'mono' : '' }, v === undefined || v === null || v === '' ? '–' : v));
  }
  return dl;
}

function show(...nodes) {
  const m = main();
  m.replaceChildren(...nodes);
}

// ---- API ------------------------------------------------------------------

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  if (opts.method === 'POST') {
    opts.headers['content-type'] = 'application/json';
    if (state.csrf) opts.headers['x-csrf-token'] = state.csrf;
    opts.body = JSON.stringify(opts.body || {});
  }
  const resp = await fetch(path, opts);
  let body = null;
  try { body = await resp.json(); } catch (_) { body = null; }
  if (resp.status === 401 && path !== '/api/login') {
    signedOut();
    throw new Error('sign in first');
  }
  if (!resp.ok) throw new Error((body && body.error) || resp.statusText);
  return body;
}

// ---- sign-in --------------------------------------------------------------

function signedOut() {
  state.me = null; state.csrf = null;
  stopLive();
  document.getElementById('nav').hidden = true;
  document.getElementById('logout').hidden = true;
  document.getElementById('who').textContent = '';
  loginView();
}

function loginView() {
  const error = el('p', { class: 'error', id: 'login-error' });
  const name = el('input', { id: 'login-name', name: 'name', autocomplete: 'username', required: true });
  const password = el('input', { id: 'login-password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const form = el('form', {
    onsubmit: async (ev) => {
      ev.preventDefault();
      error.textContent = '';
      try {
        const me = await api('/api/login', { method: 'POST', body: { name: name.value, password: password.value } });
        signedIn(me);
        if (!location.hash || location.hash === '#/login') location.hash = '#/events';
        else route();
      } catch (e) { error.textContent = e.message; }
    },
  },
  el('label', {}, 'Name', name),
  el('label', {}, 'Password', password),
  el('button', { type: 'submit', id: 'login-submit' }, 'Sign in'),
  error);
  show(el('div', { class: 'card login' }, el('h1', {}, 'Sign in to agentguard'), form));
  name.focus();
}

function signedIn(me) {
  state.me = me; state.csrf = me.csrf;
  document.getElementById('nav').hidden = false;
  document.getElementById('logout').hidden = false;
  document.getElementById('who').textContent = `${me.name} · ${me.role}`;
  pollHeld();
}

function isApprover() { return state.me && state.me.role === 'approver'; }

// ---- routing --------------------------------------------------------------

function stopLive() {
  if (state.stream) { state.stream.close(); state.stream = null; }
  if (state.viewTimer) { clearInterval(state.viewTimer); state.viewTimer = null; }
}

function route() {
  if (!state.me) return loginView();
  stopLive();
  const hash = location.hash || '#/events';
  const [path, query] = hash.slice(1).split('?');
  const parts = path.split('/').filter(Boolean);
  for (const a of document.querySelectorAll('nav a')) {
    a.classList.toggle('active', a.dataset.view === parts[0] || (parts[0] === 'event' && a.dataset.view === 'events'));
  }
  const views = { events: eventsView, event: eventView, chain: chainView, agents: agentsView, approvals: approvalsView };
  (views[parts[0]] || eventsView)(parts.slice(1), new URLSearchParams(query || ''));
}

window.addEventListener('hashchange', route);

// The nav's count of held requests: polled, and set at once by what
// changes it here (a decision, a revocation), so it is never stale after
// the user's own action.
function showHeld(n) {
  document.getElementById('held-count').textContent = n ? String(n) : '';
}

async function refreshHeld() {
  try { showHeld((await api('/api/approvals')).length); } catch (_) { /* signed out */ }
}

async function pollHeld() {
  if (state.heldTimer) clearInterval(state.heldTimer);
  refreshHeld();
  state.heldTimer = setInterval(refreshHeld, 2000);
}

// ---- events ---------------------------------------------------------------

const FILTERS = [
  ['agent', 'Agent'], ['decision', 'Decision'], ['kind', 'Kind'], ['tool', 'Tool'], ['host', 'Host'],
  ['mcp_target', 'MCP tool, prompt or resource'], ['since', 'Since (15m, RFC 3339)'], ['until', 'Until'], ['q', 'Text'],
];
const DECISIONS = ['', 'allow', 'deny', 'would-deny', 'refuse', 'intercept', 'passthrough', 'accept', 'reject'];
const KINDS = ['', 'request', 'connection', 'kernel_refusal', 'dns_query', 'approval', 'revocation', 'login',
  'policy_reload', 'credential_failure', 'token_verification', 'daemon_start', 'daemon_stop', 'retention'];

function summary(r) {
  if (r.kind === 'request' || r.kind === 'approval') return `${r.method || ''} ${r.host || ''}${r.path || ''}`;
  if (r.kind === 'login') return `${r.actor || ''} from ${r.src_ip || ''}`;
  if (r.kind === 'revocation') return `${r.agent || ''} by ${r.actor || ''}`;
  if (r.kind === 'dns_query') return `${r.method || ''} ${r.host || ''}`;
  if (r.sni) return `${r.sni}:${r.dst_port || ''}`;
  if (r.dst_ip) return `${r.dst_ip}:${r.dst_port || ''}`;
  return r.path || '';
}

function eventRow(r, fresh) {
  return el('tr', {
    class: 'event' + (fresh ? ' fresh' : ''), 'data-seq': r.seq, 'data-kind': r.kind,
    onclick: () => { location.hash = `#/event/${r.seq}`; },
  },
  el('td', { class: 'mono' }, el('a', { href: `#/event/${r.seq}` }, String(r.seq))),
  el('td', { class: 'mono nowrap' }, (r.time || '').replace('T', ' ').slice(0, 23)),
  el('td', {}, r.kind),
  el('td', { class: 'nowrap' }, r.agent || '–'),
  el('td', {}, badge(r.decision)),
  el('td', { class: 'mono' }, summary(r)),
  el('td', {}, r.tool || r.mcp_target || ''),
  el('td', {}, r.status ? String(r.status) : ''),
  el('td', {}, r.reason || ''));
}

async function eventsView(_, params) {
  const inputs = {};
  const form = el('form', {
    class: 'filters', id: 'filters',
    onsubmit: (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      for (const [k] of FILTERS) if (inputs[k].value.trim()) q.set(k, inputs[k].value.trim());
      location.hash = '#/events' + (q.toString() ? '?' + q : '');
    },
  });
  for (const [k, label] of FILTERS) {
    let input;
    if (k === 'decision' || k === 'kind') {
      input = el('select', { name: k, id: `filter-${k}` }, ...(k === 'decision' ? DECISIONS : KINDS).map((d) => el('option', { value: d }, d || 'any')));
    } else {
      input = el('input', { name: k, id: `filter-${k}`, placeholder: 'any' });
    }
    input.value = params.get(k) || '';
    inputs[k] = input;
    form.append(el('label', {}, label, input));
  }
  form.append(el('button', { type: 'submit', id: 'filter-apply' }, 'Filter'));
  form.append(el('button', { type: 'button', class: 'secondary', onclick: () => { location.hash = '#/events'; } }, 'Clear'));

  const status = el('span', { class: 'live off', id: 'live-status' }, 'connecting…');
  const tbody = el('tbody', { id: 'events' });
  const table = el('table', {},
    el('thead', {}, el('tr', {}, ...['Seq', 'Time (UTC)', 'Kind', 'Agent', 'Decision', 'What', 'Tool', 'Status', 'Reason'].map((h) => el('th', {}, h)))),
    tbody);
  show(el('h1', {}, 'Events ', status), el('div', { class: 'card' }, form), table);

  let last = 0;
  try {
    const data = await api('/api/events?' + params.toString());
    const records = data.records.slice().reverse();
    for (const r of records) tbody.append(eventRow(r, false));
    if (data.records.length) last = data.records[data.records.length - 1].seq;
    if (!records.length) tbody.append(el('tr', { id: 'no-events' }, el('td', { colspan: 9, class: 'notice' }, 'No events match.')));
  } catch (e) {
    tbody.append(el('tr', {}, el('td', { colspan: 9, class: 'error' }, e.message)));
    return;
  }
  // New events, live: what came after the newest shown, then as committed.
  const live = new URLSearchParams(params);
  live.set('after', String(last));
  const stream = new EventSource('/api/events/stream?' + live.toString());
  state.stream = stream;
  stream.onopen = () => { status.textContent = '● live'; status.className = 'live'; };
  stream.onerror = () => { status.textContent = 'reconnecting…'; status.className = 'live off'; };
  stream.addEventListener('lagged', () => route());
  stream.onmessage = (m) => {
    const r = JSON.parse(m.data);
    const none = document.getElementById('no-events');
    if (none) none.remove();
    tbody.prepend(eventRow(r, true));
    while (tbody.children.length > 1000) tbody.lastElementChild.remove();
  };
}

// ---- one event ------------------------------------------------------------

async function eventView([seq]) {
  show(el('h1', {}, `Event ${seq}`), el('p', { class: 'notice' }, 'loading…'));
  let data;
  try { data = await api(`/api/events/${encodeURIComponent(seq)}`); } catch (e) {
    show(el('h1', {}, `Event ${seq}`), el('p', { class: 'error' }, e.message)); return;
  }
  const r = data.record; const c = data.chain;
  const yes = (ok, good, bad) => el('span', { class: ok ? 'ok' : 'bad' }, ok ? good : bad);
  const dst = r.dst_ip ? `${r.dst_ip}:${r.dst_port || ''}` : '';
  const src = r.src_ip ? `${r.src_ip}:${r.src_port || ''}` : '';
  show(
    el('h1', {}, `Event ${r.seq} `, badge(r.decision), ' ', el('span', { class: 'notice' }, r.kind)),
    el('p', {}, el('a', { href: '#/events' }, '← all events')),
    el('div', { class: 'grid2' },
      el('div', { class: 'card', id: 'detail-identity' }, el('h2', {}, 'Who'), fields([
        ['Agent', r.agent], ['pid', r.pid], ['Executable', r.exe, true], ['uid', r.uid], ['gid', r.gid],
        ['Command', r.comm], ['cgroup', r.cgroup_path, true], ['cgroup id', r.cgroup_id],
        ['On behalf of', r.on_behalf_of], ['Intent', r.intent], ['Actor', r.actor],
      ])),
      el('div', { class: 'card', id: 'detail-decision' }, el('h2', {}, 'Decision'), fields([
        ['Time (UTC)', r.time, true], ['Decision', r.decision], ['Rule', r.rule, true], ['Reason', r.reason],
        ['Tool', r.tool], ['MCP target', r.mcp_target], ['JSON-RPC method', r.rpc_method], ['Policy version', r.policy_version, true],
        ['Credential id', r.credential_id, true], ['Token jti', r.token_jti, true],
        ['Approval', r.approval_id, true], ['Request hash', r.request_hash, true], ['Event id', r.id, true],
      ])),
      el('div', { class: 'card', id: 'detail-request' }, el('h2', {}, 'Request'), fields([
        ['Method', r.method], ['Host', r.host], ['Path', r.path, true], ['SNI', r.sni], ['Source', src, true],
        ['Destination', dst, true], ['Protocol', r.protocol], ['Status', r.status], ['Bytes in / out', r.bytes_in !== undefined ? `${r.bytes_in || 0} / ${r.bytes_out || 0}` : ''],
        ['Duration', r.duration_us !== undefined && r.duration_us !== null ? `${(r.duration_us / 1000).toFixed(1)} ms` : ''],
        ['traceparent', r.traceparent, true],
      ])),
      el('div', { class: 'card', id: 'detail-chain' }, el('h2', {}, 'Place in the hash chain'), fields([
        ['Sequence', c.seq],
        ['Previous hash', c.prev_hash, true],
        ['Hash', c.hash, true],
        ['Content', yes(c.content_matches, '✓ matches its hash', '✗ does not match its hash (edited)')],
        ['Previous event', c.previous ? yes(c.previous.links, `✓ ${c.previous.seq} links to it`, `✗ ${c.previous.seq} does not link`) : 'none (start of the stored chain)'],
        ['Next event', c.next ? yes(c.next.links, `✓ ${c.next.seq} links to it`, `✗ ${c.next.seq} does not link`) : 'none yet'],
        ['Signed checkpoint', c.checkpoint ? `seq ${c.checkpoint.seq} at ${c.checkpoint.time}, key ${c.checkpoint.key_id.slice(0, 16)}…` : 'not yet covered by a checkpoint'],
      ])),
    ),
  );
}

// ---- chain ----------------------------------------------------------------

async function chainView() {
  const body = el('div', { id: 'chain' }, el('p', { class: 'notice' }, 'loading…'));
  const button = el('button', {
    type: 'button', id: 'verify-now',
    onclick: async () => {
      button.disabled = true; button.textContent = 'Verifying…';
      try { render(await api('/api/chain/verify', { method: 'POST' })); } catch (e) { body.replaceChildren(el('p', { class: 'error' }, e.message)); }
      button.disabled = false; button.textContent = 'Verify now';
    },
  }, 'Verify now');
  show(el('h1', {}, 'Audit chain'), el('div', { class: 'actions' }, button), body);
  const render = (d) => {
    const check = d.check; const cp = d.last_checkpoint; const a = d.audit;
    const verification = check ? [
      ['Result', badge(check.result)],
      ['When (UTC)', check.time, true],
      ['Took', `${check.duration_ms} ms`],
      ['Events', check.report ? `${check.report.events} (seq ${check.report.first_seq ?? '–'} to ${check.report.last_seq ?? '–'})` : ''],
      ['Signed checkpoints', check.report ? check.report.checkpoints : ''],
      ['Exported checkpoints matched', check.anchors],
      ['Key', check.key_id, true],
      ['First bad sequence number', check.break ? String(check.break.seq) : 'none'],
      ['Why', check.break ? check.break.reason : (check.error || '')],
    ] : [['Result', 'not verified yet']];
    body.replaceChildren(el('div', { class: 'grid2' },
      el('div', { class: 'card', id: 'chain-verification' }, el('h2', {}, 'Last verification'), fields(verification)),
      el('div', { class: 'card', id: 'chain-checkpoint' }, el('h2', {}, 'Last signed checkpoint'), fields(cp ? [
        ['Sequence', cp.seq], ['Time (UTC)', cp.time, true], ['Hash', cp.hash, true], ['Key', cp.key_id, true],
      ] : [['Checkpoint', 'none yet']])),
      el('div', { class: 'card' }, el('h2', {}, 'Store'), fields([
        ['Database', a.db_path, true], ['Last sequence', a.last_seq], ['Events written since start', a.events_written],
        ['Queue', `${a.queue_depth} / ${a.queue_capacity}`], ['Write errors', a.write_errors],
        ['Last exported checkpoint', a.anchor_last_exported_seq || 'none'], ['Export failures', a.anchor_failures],
      ])),
    ));
  };
  try { render(await api('/api/chain')); } catch (e) { body.replaceChildren(el('p', { class: 'error' }, e.message)); }
}

// ---- agents ---------------------------------------------------------------

async function agentsView() {
  const body = el('div', { id: 'agents' }, el('p', { class: 'notice' }, 'loading…'));
  show(el('h1', {}, 'Agents'), body);
  let d;
  try { d = await api('/api/agents'); } catch (e) { body.replaceChildren(el('p', { class: 'error' }, e.message)); return; }
  const reload = d.last_reload;
  const cards = d.agents.map((a) => {
    const counts = Object.entries(a.counts).map(([k, v]) => `${k} ${v}`).join(', ') || 'no events';
    const reason = el('input', { placeholder: 'reason', id: `revoke-reason-${a.name}` });
    const actions = el('div', { class: 'actions' });
    if (isApprover()) {
      if (a.revoked) {
        actions.append(el('button', {
          type: 'button', class: 'secondary', id: `restore-${a.name}`,
          onclick: async () => { await act(`/api/agents/${encodeURIComponent(a.name)}/restore`, {}); agentsView(); },
        }, 'Restore'));
      } else {
        actions.append(reason, el('button', {
          type: 'button', class: 'danger', id: `revoke-${a.name}`,
          onclick: async () => { await act(`/api/agents/${encodeURIComponent(a.name)}/revoke`, { reason: reason.value }); refreshHeld(); agentsView(); },
        }, 'Revoke now'));
      }
    }
    return el('div', { class: 'card agent', 'data-agent': a.name },
      el('h2', {}, a.name, ' ', a.revoked ? badge('revoked') : badge(a.guarded ? 'guarded' : 'unguarded', a.guarded ? 'allow' : 'deny'), ' ', badge(a.mode, a.mode === 'audit' ? 'would-deny' : '')),
      fields([
        ['cgroup', a.cgroup_path || a.cgroup, true], ['cgroup id', a.cgroup_id], ['Policy file', a.policy_file, true],
        ['Tools', a.tools.map((t) => t.name + (t.approval ? ` (approval, ${t.approval}s)` : '')).join(', ')],
        ['Events', counts], ['Open connections', a.open_connections], ['Held for approval', a.held],
        ['Revoked', a.revoked ? `since ${a.revoked.time} by ${a.revoked.by}: ${a.revoked.reason}` : 'no'],
      ]),
      actions);
  });
  body.replaceChildren(
    el('div', { class: 'card', id: 'policy' }, el('h2', {}, 'Policy'), fields([
      ['Version in force', d.policy_version, true],
      ['Last reload', `${reload.time} (${reload.trigger}): ${reload.accepted ? 'accepted' : 'rejected'}`],
      ['Last reload error', reload.error || 'none'],
    ])),
    ...cards);
}

async function act(path, body) {
  try { return await api(path, { method: 'POST', body }); } catch (e) { alertError(e); return null; }
}

function alertError(e) {
  const note = el('p', { class: 'error', id: 'action-error' }, e.message);
  main().prepend(note);
  setTimeout(() => note.remove(), 8000);
}

// ---- approvals ------------------------------------------------------------

async function approvalsView() {
  const body = el('div', { id: 'approvals' });
  show(el('h1', {}, 'Held for approval'), body);
  const render = (held) => {
    showHeld(held.length);
    if (!held.length) { body.replaceChildren(el('p', { class: 'notice', id: 'no-approvals' }, 'No request is waiting.')); return; }
    // Keep what an approver is typing: only add and remove cards.
    const ids = new Set(held.map((h) => h.id));
    for (const card of [...body.querySelectorAll('.approval')]) if (!ids.has(card.dataset.id)) card.remove();
    const none = document.getElementById('no-approvals'); if (none) none.remove();
    for (const h of held) {
      if (body.querySelector(`[data-id="${CSS.escape(h.id)}"]`)) continue;
      const reason = el('input', { placeholder: 'reason for a denial', id: `deny-reason-${h.id}` });
      const actions = el('div', { class: 'actions' });
      if (isApprover()) {
        actions.append(
          el('button', { type: 'button', id: `approve-${h.id}`, onclick: async () => { await act(`/api/approvals/${h.id}/approve`, { hash: h.request_hash }); tick(); } }, 'Approve'),
          reason,
          el('button', { type: 'button', class: 'danger', id: `deny-${h.id}`, onclick: async () => { await act(`/api/approvals/${h.id}/deny`, { hash: h.request_hash, reason: reason.value }); tick(); } }, 'Deny'));
      } else {
        actions.append(el('span', { class: 'notice' }, 'Approvers decide; your role is auditor.'));
      }
      body.append(el('div', { class: 'card approval', 'data-id': h.id },
        el('h2', {}, badge('held'), ' ', `${h.method} ${h.url}`),
        fields([
          ['Request', h.id, true], ['Agent', h.agent], ['pid', h.pid], ['Executable', h.exe, true], ['uid', h.uid],
          ['Tool', h.tool], ['Intent', h.intent], ['On behalf of', h.on_behalf_of],
          ['Held since (UTC)', h.held_since, true], ['Refused unless decided by', h.expires, true],
          ['Request hash', h.request_hash, true], ['Body', `${h.body_bytes} bytes`],
        ]),
        h.body_preview ? el('pre', {}, h.body_preview) : null,
        actions));
    }
  };
  const tick = async () => { try { render(await api('/api/approvals')); } catch (e) { body.replaceChildren(el('p', { class: 'error' }, e.message)); } };
  await tick();
  state.viewTimer = setInterval(tick, 1000);
}

// ---- start ----------------------------------------------------------------

document.getElementById('logout').addEventListener('click', async () => {
  try { await api('/api/logout', { method: 'POST' }); } catch (_) { /* gone anyway */ }
  signedOut();
});

(async () => {
  try {
    const resp = await fetch('/api/me');
    if (resp.ok) { signedIn(await resp.json()); route(); } else { signedOut(); }
  } catch (_) { signedOut(); }
})();
