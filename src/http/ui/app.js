// The saga browser: a list of sagas (/ui), one saga's page (/ui/sagas/{id}) and the saga
// definitions (/ui/definitions).
// Plain JS on the service's own HTTP API; no build step, nothing loaded from elsewhere.
// Everything that came from a saga (payload, outputs, errors, quarantined bodies) is put in
// the page as text (textContent), never as HTML.
'use strict';

const STATUSES = ['running', 'compensating', 'paused', 'completed', 'compensated', 'failed'];
// Statuses in which the saga waits for an operator: its page refreshes less often.
const WAITING = new Set(['paused', 'failed']);
const UNFINISHED = new Set(['running', 'compensating', 'paused', 'failed']);
const TOKEN_KEY = 'saga-admin-token'; // sessionStorage: this tab only
const BY_KEY = 'saga-operator-name'; // localStorage: a convenience, not a secret
const LIST_REFRESH_MS = 2000;
const SAGA_REFRESH_MS = 1000;
const FAILED_REFRESH_MS = 5000;
const PAGE_SIZE = 50;

// What each operator action does, and in which statuses the service accepts it. `label`
// and `help` may depend on the saga and, for skip, on the step it skips.
const ACTIONS = {
  abort: {
    label: 'Abort',
    when: ['running', 'paused'],
    help: 'The saga stops going forward and compensates: first the steps whose commands are pending (they may have run), then the earlier done steps, last first.',
    danger: true,
  },
  resume: {
    label: 'Resume',
    when: ['running', 'compensating', 'paused'],
    help: (saga) => saga.status === 'paused'
      ? 'The paused step is sent again now (same command_id), with its attempts reset; the saga runs on.'
      : 'The pending command is sent again now (same command_id), with its attempts reset.',
  },
  skip: {
    label: (saga, step) => saga.status === 'paused'
      ? `Skip ${step || 'step'}`
      : step ? `Skip compensation of ${step}` : 'Skip compensation',
    when: ['compensating', 'failed', 'paused'],
    help: (saga, step) => saga.status === 'paused'
      ? `Step ${step} counts as done with output {} without running it (you did its work by hand); the saga goes on with the next step.`
      : `The pending compensation of ${step} is marked done without running it (you undid it by hand); the saga goes on with the next one.`,
    danger: true,
  },
  retry: {
    label: 'Retry',
    when: ['failed'],
    help: 'The failed compensation is sent again (same command_id) and the saga compensates on.',
  },
};

const actionText = (v, saga, step) => (typeof v === 'function' ? v(saga, step) : v);

// ------------------------------------------------------------------ small helpers

/** Creates an element: el('td', {class: 'x', data: {code: 'a'}}, 'text', child, ...). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'data') {
      for (const [dk, dv] of Object.entries(v)) {
        if (dv !== undefined && dv !== null) node.dataset[dk] = dv;
      }
    } else if (k === 'text') {
      node.textContent = v;
    } else if (k.startsWith('on')) {
      node.addEventListener(k.slice(2), v);
    } else {
      node.setAttribute(k, v === true ? '' : v);
    }
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const $ = (sel) => document.querySelector(sel);
const pad = (n, w = 2) => String(n).padStart(w, '0');

function fmtTime(iso, withMs) {
  if (!iso) return '';
  const d = new Date(iso);
  const today = new Date();
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}` +
    (withMs ? `.${pad(d.getMilliseconds(), 3)}` : '');
  const sameDay = d.toDateString() === today.toDateString();
  return sameDay ? time : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

function fmtDuration(ms) {
  if (!(ms >= 0)) return '';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const m = Math.floor(ms / 60000);
  if (m < 60) return `${m} min ${Math.round((ms % 60000) / 1000)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

const since = (from, to) => fmtDuration(new Date(to) - new Date(from));
const human = (s) => String(s || '').replace(/_/g, ' ');

function badge(status, extra) {
  return el('span', { class: `badge st-${status}`, data: { status } }, human(status), extra);
}

function showBanner(text) {
  const b = $('#banner');
  b.textContent = text || '';
  b.hidden = !text;
}

async function getJson(url) {
  let r;
  try {
    r = await fetch(url, { headers: { accept: 'application/json' }, cache: 'no-store' });
  } catch (e) {
    throw new Error(`cannot reach the service (${e.message})`);
  }
  let body = null;
  try {
    body = await r.json();
  } catch (_) {
    /* not JSON */
  }
  return { status: r.status, body };
}

function pretty(value) {
  return JSON.stringify(value, null, 2);
}

// ------------------------------------------------------------------ the admin token

const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set(t) {
    sessionStorage.setItem(TOKEN_KEY, t);
    token.show();
  },
  forget() {
    sessionStorage.removeItem(TOKEN_KEY);
    token.show();
  },
  show() {
    $('#token-state').hidden = !token.get();
  },
};

// ------------------------------------------------------------------ polling

// One timer for the view on screen; a new view or a refresh replaces it.
let timer = null;
function schedule(fn, ms) {
  clearTimeout(timer);
  timer = ms ? setTimeout(fn, ms) : null;
}

// ------------------------------------------------------------------ list: /ui

const listState = { status: '', saga: '', stuck: false, rows: [], next: null, paged: false, last: '' };

function listUrl(after) {
  const q = new URLSearchParams();
  if (listState.status) q.set('status', listState.status);
  if (listState.saga) q.set('saga', listState.saga);
  if (listState.stuck) q.set('stuck', 'true');
  q.set('limit', String(PAGE_SIZE));
  if (after) q.set('after', after);
  return `/sagas?${q}`;
}

function syncListQuery() {
  const q = new URLSearchParams();
  if (listState.status) q.set('status', listState.status);
  if (listState.saga) q.set('saga', listState.saga);
  if (listState.stuck) q.set('stuck', 'true');
  const s = q.toString();
  history.replaceState(null, '', s ? `/ui?${s}` : '/ui');
}

function renderListShell() {
  const params = new URLSearchParams(location.search);
  listState.status = STATUSES.includes(params.get('status')) ? params.get('status') : '';
  listState.saga = params.get('saga') || '';
  listState.stuck = params.get('stuck') === 'true';
  document.title = 'Sagas · saga-service';
  const chips = el('nav', { class: 'counts', id: 'counts', 'aria-label': 'Filter by status' });
  const chip = (status, label) =>
    el('button', {
      type: 'button', class: `chip st-${status || 'all'}`, data: { filter: status },
      'aria-pressed': String(listState.status === status),
      onclick: () => {
        listState.status = status;
        for (const c of chips.children) c.setAttribute('aria-pressed', String(c.dataset.filter === status));
        reloadList();
      },
    }, el('span', { class: 'chip-label' }, label), el('span', { class: 'chip-count', data: { count: status || 'all' } }, '–'));
  chips.append(chip('', 'all'), ...STATUSES.map((s) => chip(s, s)));

  const typeInput = el('input', {
    id: 'type-filter', type: 'search', placeholder: 'saga type', value: listState.saga,
    'aria-label': 'Only sagas of this type', spellcheck: 'false',
  });
  typeInput.addEventListener('change', () => {
    listState.saga = typeInput.value.trim();
    reloadList();
  });
  const stuck = el('input', { id: 'stuck-filter', type: 'checkbox', checked: listState.stuck });
  stuck.addEventListener('change', () => {
    listState.stuck = stuck.checked;
    reloadList();
  });
  const filters = el('div', { class: 'filters' },
    el('label', {}, 'Type ', typeInput),
    el('label', { title: 'Unfinished sagas with no transition for longer than any step may wait' }, stuck, ' stuck only'),
    el('span', { id: 'live', class: 'live muted' }, ''));

  const table = el('table', { class: 'sagas', id: 'sagas' },
    el('thead', {}, el('tr', {},
      ['Code', 'Type', 'Status', 'Step', 'Transitions', 'Created', 'Updated'].map((h) => el('th', {}, h)))),
    el('tbody', {}));
  const more = el('button', { id: 'more', type: 'button', hidden: true, onclick: loadMore }, 'Load more');
  $('#main').replaceChildren(
    el('h1', {}, 'Sagas'),
    chips, filters, table,
    el('p', { id: 'empty', class: 'muted empty', hidden: true }),
    more);
}

function sagaRow(s) {
  const href = `/ui/sagas/${encodeURIComponent(s.code)}`;
  return el('tr', { data: { code: s.code, status: s.status } },
    el('td', {}, el('a', { href, class: 'mono', title: s.saga_id }, s.code)),
    el('td', {}, `${s.saga}`, el('span', { class: 'muted' }, ` v${s.definition_version}`)),
    el('td', {}, badge(s.status)),
    el('td', {}, s.step || el('span', { class: 'muted' }, '—')),
    el('td', { class: 'num' }, String(s.version)),
    el('td', { title: s.created_at }, fmtTime(s.created_at)),
    el('td', { title: s.updated_at }, fmtTime(s.updated_at), el('span', { class: 'muted' }, ` (+${since(s.created_at, s.updated_at)})`)));
}

function renderRows() {
  $('#sagas tbody').replaceChildren(...listState.rows.map(sagaRow));
  const empty = $('#empty');
  empty.hidden = listState.rows.length > 0;
  empty.textContent = listState.status || listState.saga || listState.stuck
    ? 'No saga matches these filters.'
    : 'No sagas yet. Start one with POST /start (see the README), and it appears here.';
  $('#more').hidden = !listState.next;
}

async function refreshCounts() {
  const { status, body } = await getJson('/sagas/counts');
  if (status !== 200 || !body) return;
  for (const node of document.querySelectorAll('[data-count]')) {
    const k = node.dataset.count;
    node.textContent = String(k === 'all' ? body.total : body.counts[k] ?? 0);
  }
}

async function refreshList() {
  const { status, body } = await getJson(listUrl());
  if (status !== 200) throw new Error(body && body.error ? body.error : `GET /sagas answered ${status}`);
  const json = JSON.stringify(body);
  if (json !== listState.last) {
    listState.last = json;
    listState.rows = body.sagas;
    listState.next = body.next;
    renderRows();
  }
}

async function listTick() {
  try {
    // Once "Load more" was used, the rows stay as they are; the counts still refresh.
    await Promise.all([refreshCounts(), listState.paged ? null : refreshList()]);
    showBanner('');
    $('#live').textContent = listState.paged
      ? `counts refreshed ${fmtTime(new Date().toISOString())} · list paused while paging`
      : `refreshed ${fmtTime(new Date().toISOString())} · every ${LIST_REFRESH_MS / 1000} s`;
  } catch (e) {
    showBanner(`${e.message}; retrying…`);
  }
  schedule(listTick, LIST_REFRESH_MS);
}

function reloadList() {
  syncListQuery();
  listState.paged = false;
  listState.last = '';
  listState.rows = [];
  listState.next = null;
  schedule(null, 0);
  listTick();
}

async function loadMore() {
  if (!listState.next) return;
  const { status, body } = await getJson(listUrl(listState.next));
  if (status !== 200) {
    showBanner(body && body.error ? body.error : `GET /sagas answered ${status}`);
    return;
  }
  listState.paged = true;
  listState.rows = listState.rows.concat(body.sagas);
  listState.next = body.next;
  renderRows();
}

// ------------------------------------------------------------------ one saga: /ui/sagas/{id}

// `older`: history rows loaded with "Load older" (GET /sagas/{id} answers the latest 100),
// oldest first; kept across the page's refreshes, which only bring the latest page.
const sagaState = { id: '', last: '', saga: null, older: [], loadingOlder: false };
const HISTORY_PAGE = 100;

// The loaded history, oldest first: the rows loaded with "Load older", then the latest page.
function loadedHistory(saga) {
  const first = saga.history.length ? saga.history[0].version : Infinity;
  return sagaState.older.filter((h) => h.version < first).concat(saga.history);
}

async function loadOlder() {
  const rows = loadedHistory(sagaState.saga);
  if (!rows.length || sagaState.loadingOlder) return;
  sagaState.loadingOlder = true;
  try {
    const url = `/sagas/${encodeURIComponent(sagaState.id)}?history_before=${rows[0].version}` +
      `&history_limit=${HISTORY_PAGE}&quarantined_limit=1`;
    const { status, body } = await getJson(url);
    if (status !== 200) throw new Error(body && body.error ? body.error : `GET /sagas/{id} answered ${status}`);
    const latest = sagaState.saga.history;
    const first = latest.length ? latest[0].version : Infinity;
    sagaState.older = body.history.concat(rows.filter((h) => h.version < first));
    renderSaga(sagaState.saga);
  } catch (e) {
    showBanner(e.message);
  } finally {
    sagaState.loadingOlder = false;
  }
}

// The steps in order, a group's (consecutive steps with the same `group`, which run in
// parallel) side by side in one row, framed and labelled with the group's name. `card(step, i)`
// gives each step's <li class="step">. Used by the saga page and the definitions page.
function stageList(id, steps, card) {
  const items = [];
  for (let i = 0; i < steps.length;) {
    const group = steps[i].group;
    let end = i + 1;
    while (group && end < steps.length && steps[end].group === group) end++;
    if (!group) {
      items.push(card(steps[i], i));
    } else {
      const labelId = `${id}-group-${i}`;
      const members = steps.slice(i, end).map((s, j) => card(s, i + j));
      items.push(el('li', { class: 'stage-group', data: { group } },
        el('span', { class: 'dot group-dot', 'aria-hidden': 'true' }, '∥'),
        el('div', { class: 'group-frame', role: 'group', 'aria-labelledby': labelId },
          el('div', { class: 'group-label', id: labelId },
            el('span', { class: 'muted' }, 'group '), el('strong', { class: 'mono' }, group),
            el('span', { class: 'muted' }, ` · steps ${i + 1}–${end} run in parallel`)),
          el('ol', { class: 'group-steps' }, members))));
    }
    i = end;
  }
  return el('ol', { id, class: 'stages' }, items);
}

// The badges of a step's keys that change the saga's course: pivot, and pause on error.
function stepKeys(step) {
  return [
    step.pivot ? el('span', { class: 'badge pivot', title: 'Once this step is done the saga never compensates: a later failure pauses it, and abort is refused.' },
      'pivot: no compensation after this') : null,
    step.on_error === 'pause' ? el('span', { class: 'badge on-error-pause', title: 'A failure of this step pauses the saga for an operator instead of compensating.' },
      'on error: pause') : null,
  ];
}

function stepCard(step, index, saga) {
  const isPending = !!step.pending;
  const meta = [`attempts ${step.attempts}/${step.max_attempts}`];
  if (step.compensate_attempts) meta.push(`compensate attempts ${step.compensate_attempts}/${step.max_attempts}`);
  if (!step.compensate) meta.push('not compensated on failure');
  // Its times: when it was sent, then each history event about it, relative to that.
  const from = step.sent_at;
  const events = saga.history.filter((h) => h.step === step.name && h.event !== 'started');
  const shown = events.slice(-6);
  const times = [];
  if (from) times.push(`sent ${fmtTime(from, true)}`);
  if (events.length > shown.length) times.push(`… ${events.length - shown.length} earlier`);
  for (const h of shown) {
    times.push(from ? `${human(h.event)} +${since(from, h.at)}` : `${human(h.event)} ${fmtTime(h.at, true)}`);
  }
  let pending = null;
  if (isPending) {
    const p = step.pending;
    const parked = p.phase === 'parked';
    const what = p.phase === 'backing_off'
      ? `${p.action} answered error; re-sending after a back-off (attempt ${p.attempt} of ${step.max_attempts})`
      : parked && p.action === 'execute'
        ? 'execute failed: the saga is paused here, waiting for an operator (resume, skip or abort)'
        : parked
          ? `${p.action} out of attempts: waiting for an operator (retry or skip)`
          : `waiting for a reply to ${p.action}, attempt ${p.attempt} of ${step.max_attempts} (time-out ${fmtDuration(step.timeout_ms)})`;
    pending = el('div', { class: `pending${parked ? ' parked' : ''}` },
      parked ? null : el('span', { class: 'spinner', 'aria-hidden': 'true' }), what,
      el('div', { class: 'muted mono small' }, `command_id ${p.command_id}`));
  }
  const output = step.output !== null && step.output !== undefined
    ? el('details', { class: 'output', open: JSON.stringify(step.output).length <= 120 },
      el('summary', {}, 'output'), el('pre', {}, pretty(step.output)))
    : null;
  return el('li', { class: `step st-${step.status}${isPending ? ' is-pending' : ''}`, data: { step: step.name, status: step.status } },
    el('span', { class: 'dot', 'aria-hidden': 'true' }, String(index + 1)),
    el('div', { class: 'step-body' },
      el('div', { class: 'step-head' },
        el('span', { class: 'step-name' }, step.name), badge(step.status),
        el('span', { class: 'muted small' }, `queue ${step.queue}`), stepKeys(step)),
      el('div', { class: 'step-meta muted' }, meta.join(' · ')),
      times.length ? el('div', { class: 'step-times muted' }, times.join(' → ')) : null,
      pending,
      step.error ? el('div', { class: 'step-error' }, el('strong', {}, 'error: '), step.error) : null,
      output));
}

// The steps skip would act on: a paused saga's parked executes, or the pending compensation.
function skippable(saga) {
  const steps = saga.steps || [];
  const pending = steps.filter((s) => s.pending);
  const which = saga.status === 'paused'
    ? pending.filter((s) => s.pending.phase === 'parked' && s.pending.action === 'execute')
    : pending.filter((s) => s.pending.action === 'compensate');
  if (which.length) return which.map((s) => s.name);
  return saga.step ? [saga.step] : [];
}

// The done pivot step, if any: past it the saga never compensates and abort is refused.
const donePivot = (saga) => (saga.steps || []).find((s) => s.pivot && s.status === 'done');

function actionButtons(saga) {
  const box = el('div', { class: 'actions', id: 'actions' });
  const pivot = donePivot(saga);
  let note = null;
  for (const [name, a] of Object.entries(ACTIONS)) {
    let allowed = a.when.includes(saga.status);
    let why = allowed ? '' : `${actionText(a.label, saga)}: only when the saga is ${a.when.join(' or ')}`;
    if (name === 'abort' && allowed && pivot) {
      allowed = false;
      why = `Abort is not possible: the pivot step ${pivot.name} is done, so the saga only goes forward (resume or skip instead).`;
      note = el('p', { id: 'abort-refused', class: 'muted small' }, why);
    }
    // Skip names the step it skips: one button per such step (a group may have several).
    const targets = name === 'skip' && allowed ? skippable(saga) : [null];
    for (const step of targets) {
      box.append(el('button', {
        type: 'button', class: a.danger ? 'danger' : '', data: { action: name, step: step || undefined },
        disabled: !allowed,
        title: allowed ? actionText(a.help, saga, step) : why,
        'aria-describedby': note && name === 'abort' ? 'abort-refused' : undefined,
        onclick: () => openAction(name, saga, step),
      }, actionText(a.label, saga, step)));
    }
  }
  return el('div', {}, box, note);
}

// The saga's deadline: when it is, and whether it went off.
function deadlineText(saga) {
  if (!saga.deadline_at) return null;
  const at = fmtTime(saga.deadline_at, false);
  if (saga.deadline_passed) return `${at} · passed: the saga was aborted (or paused past its pivot)`;
  if (!UNFINISHED.has(saga.status)) return `${at} · not reached (finished before it)`;
  const left = new Date(saga.deadline_at) - Date.now();
  return left > 0 ? `${at} · in ${fmtDuration(left)}` : `${at} · due now`;
}

function renderSaga(saga) {
  document.title = `${saga.code} · ${saga.status} · saga-service`;
  const unfinished = UNFINISHED.has(saga.status);
  const live = WAITING.has(saga.status)
    ? `waiting for an operator · refreshing every ${FAILED_REFRESH_MS / 1000} s`
    : unfinished ? `live · refreshing every ${SAGA_REFRESH_MS / 1000} s` : 'finished · not refreshing';
  const defHref = `/ui/definitions?${new URLSearchParams({ saga: saga.saga, version: String(saga.definition_version) })}`;
  const deadline = deadlineText(saga);
  const facts = [
    ['Type', el('a', { href: defHref, title: 'Its definition at this version' }, `${saga.saga} (definition v${saga.definition_version})`)],
    ['Current step', saga.step || '—'],
    ['Transitions', String(saga.version)],
    ['Created', `${fmtTime(saga.created_at, true)}`],
    ['Updated', `${fmtTime(saga.updated_at, true)} (+${since(saga.created_at, saga.updated_at)})`],
    deadline ? ['Deadline', el('span', {
      id: 'saga-deadline', class: saga.deadline_passed ? 'error' : '', title: saga.deadline_at,
      data: { passed: String(!!saga.deadline_passed) },
    }, deadline)] : null,
  ].filter(Boolean);
  const head = el('section', { class: 'saga-head' },
    el('nav', { class: 'crumbs' }, el('a', { href: '/ui' }, '← all sagas')),
    el('h1', {}, el('span', { class: 'mono', id: 'saga-code' }, saga.code), ' ',
      el('span', { id: 'saga-status', data: { status: saga.status } }, badge(saga.status))),
    el('p', { class: 'uuid muted' }, 'UUID ', el('span', { class: 'mono', id: 'saga-uuid' }, saga.saga_id)),
    el('p', { id: 'saga-live', class: `live muted${unfinished ? ' on' : ''}` }, live),
    el('dl', { class: 'facts' }, facts.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)])),
    // A completed or compensated saga never changes again: no action applies.
    unfinished ? actionButtons(saga) : null);

  const steps = saga.steps || [];
  const timeline = el('section', { class: 'timeline' }, el('h2', {}, 'Steps'),
    steps.length
      ? stageList('steps', steps, (s, i) => stepCard(s, i, saga))
      : el('p', { class: 'muted' }, 'The definition of this saga is not loaded; see the history below.'));

  const rows = loadedHistory(saga);
  const total = saga.history_total === undefined ? rows.length : saga.history_total;
  const hidden = Math.max(0, total - rows.length);
  const older = hidden
    ? el('p', { class: 'muted', id: 'history-hidden' }, `${hidden} older transition${hidden === 1 ? '' : 's'} not shown `,
      el('button', { type: 'button', id: 'history-older', onclick: loadOlder },
        `Load ${Math.min(hidden, HISTORY_PAGE)} older`))
    : null;
  const history = el('section', { class: 'history' }, el('h2', {}, `History (${total})`), older,
    el('table', { id: 'history' },
      el('thead', {}, el('tr', {}, ['#', 'Event · step', 'Status after', 'Detail', 'At'].map((h) => el('th', {}, h)))),
      el('tbody', {}, rows.map((h) => el('tr', { data: { event: h.event, version: String(h.version) } },
        el('td', { class: 'num' }, String(h.version)),
        el('td', {}, human(h.event), h.step ? el('div', { class: 'muted mono small' }, h.step) : null),
        el('td', {}, badge(h.status)),
        el('td', { class: 'detail' }, h.detail || ''),
        el('td', { title: h.at }, fmtTime(h.at, true)))))));

  const q = saga.quarantined || [];
  const qTotal = saga.quarantined_total === undefined ? q.length : saga.quarantined_total;
  const qHidden = Math.max(0, qTotal - q.length);
  const quarantine = el('section', { class: 'quarantine', id: 'quarantine' },
    el('h2', {}, `Quarantined replies (${qTotal})`),
    qHidden ? el('p', { class: 'muted', id: 'quarantine-hidden' },
      `the latest ${q.length} shown; ${qHidden} earlier not shown (GET /sagas/{id}?quarantined_before=${q.length ? q[0].id : ''})`) : null,
    q.length
      ? el('ul', {}, q.map((m) => el('li', {},
        el('div', {}, el('strong', {}, m.reason), el('span', { class: 'muted' }, ` · ${fmtTime(m.at, true)}`)),
        el('pre', {}, m.body))))
      : el('p', { class: 'muted' }, 'None: every reply for this saga could be applied.'));

  const payload = el('section', { class: 'payload' }, el('h2', {}, 'Payload'), el('pre', {}, pretty(saga.payload)));

  const openOutputs = new Set([...document.querySelectorAll('#steps li.step')]
    .filter((li) => li.querySelector('details[open]')).map((li) => li.dataset.step));
  $('#main').replaceChildren(head, el('div', { class: 'columns' }, timeline, el('div', {}, history, quarantine, payload)));
  for (const li of document.querySelectorAll('#steps li.step')) {
    const d = li.querySelector('details');
    if (d && openOutputs.has(li.dataset.step)) d.open = true;
  }
}

async function sagaTick() {
  let next = SAGA_REFRESH_MS;
  try {
    const { status, body } = await getJson(`/sagas/${encodeURIComponent(sagaState.id)}`);
    if (status === 404 || status === 400) {
      $('#main').replaceChildren(
        el('nav', { class: 'crumbs' }, el('a', { href: '/ui' }, '← all sagas')),
        el('h1', {}, 'No such saga'),
        el('p', { id: 'not-found', class: 'error' }, body && body.error ? body.error : `no saga ${sagaState.id}`));
      document.title = 'No such saga · saga-service';
      showBanner('');
      return;
    }
    if (status !== 200) throw new Error(body && body.error ? body.error : `GET /sagas/{id} answered ${status}`);
    showBanner('');
    sagaState.saga = body;
    const json = JSON.stringify(body);
    if (json !== sagaState.last) {
      sagaState.last = json;
      renderSaga(body);
    }
    if (!UNFINISHED.has(body.status)) next = 0;
    else if (WAITING.has(body.status)) next = FAILED_REFRESH_MS;
  } catch (e) {
    showBanner(`${e.message}; retrying…`);
  }
  schedule(sagaTick, next);
}

function refreshSagaNow() {
  schedule(null, 0);
  sagaTick();
}

// ------------------------------------------------------------------ operator actions

const dialog = { action: '', saga: null, step: null, busy: false };

function openAction(name, saga, step) {
  const a = ACTIONS[name];
  const label = actionText(a.label, saga, step);
  dialog.action = name;
  dialog.saga = saga;
  dialog.step = step || null;
  $('#action-title').textContent = `${label} · saga ${saga.code}?`;
  $('#action-help').textContent = actionText(a.help, saga, step);
  $('#action-reason').value = '';
  $('#action-by').value = localStorage.getItem(BY_KEY) || '';
  $('#action-error').hidden = true;
  $('#token-row').hidden = true;
  $('#action-token').value = '';
  const submit = $('#action-submit');
  submit.textContent = label;
  submit.className = a.danger ? 'danger' : 'primary';
  $('#action-dialog').showModal();
  $('#action-reason').focus();
}

function askToken(refused) {
  $('#token-help').textContent = refused
    ? 'The admin token was refused (401). Enter it again.'
    : 'This service requires an admin token for operator actions (401 without it). Enter SAGA_ADMIN_TOKEN; this tab keeps it until closed.';
  $('#token-row').hidden = false;
  $('#action-token').focus();
}

async function submitAction(ev) {
  ev.preventDefault();
  if (dialog.busy) return;
  const typed = $('#action-token').value.trim();
  if (!$('#token-row').hidden && !typed) {
    askToken(false);
    return;
  }
  if (typed) token.set(typed);
  const note = {};
  const reason = $('#action-reason').value.trim();
  const by = $('#action-by').value.trim();
  if (reason) note.reason = reason;
  if (by) {
    note.by = by;
    localStorage.setItem(BY_KEY, by);
  }
  // Skip names the step it skips, and every action holds to the version on screen: a
  // double click, or a saga that moved on meanwhile, is refused (409/412), never applied twice.
  if (dialog.action === 'skip' && dialog.step) note.step = dialog.step;
  const headers = {
    'content-type': 'application/json',
    accept: 'application/json',
    'if-match': `"${dialog.saga.version}"`,
  };
  const sent = token.get();
  if (sent) headers.authorization = `Bearer ${sent}`;
  const err = $('#action-error');
  err.hidden = true;
  dialog.busy = true;
  $('#action-submit').disabled = true;
  try {
    const r = await fetch(`/sagas/${encodeURIComponent(dialog.saga.saga_id)}/${dialog.action}`, {
      method: 'POST', headers, body: JSON.stringify(note),
    });
    let body = null;
    try {
      body = await r.json();
    } catch (_) {
      /* not JSON */
    }
    if (r.status === 401) {
      token.forget();
      $('#action-token').value = '';
      askToken(!!sent);
      return;
    }
    if (r.status === 202) {
      $('#action-dialog').close();
      showBanner('');
      flash(`${actionText(ACTIONS[dialog.action].label, dialog.saga, dialog.step)} accepted for ${dialog.saga.code}.`);
      refreshSagaNow();
      return;
    }
    if (r.status === 412) refreshSagaNow();
    err.textContent = `${r.status}: ${body && body.error ? body.error : r.statusText}`;
    err.hidden = false;
    if (r.status === 409) refreshSagaNow();
  } catch (e) {
    err.textContent = `cannot reach the service (${e.message})`;
    err.hidden = false;
  } finally {
    dialog.busy = false;
    $('#action-submit').disabled = false;
  }
}

let flashTimer = null;
function flash(text) {
  let f = $('#flash');
  if (!f) {
    f = el('p', { id: 'flash', class: 'flash', role: 'status' });
    document.body.append(f);
  }
  f.textContent = text;
  f.hidden = false;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => { f.hidden = true; }, 4000);
}

// ------------------------------------------------------------------ definitions: /ui/definitions

// Defaults of the optional keys (CONTRACT.md section 2): the API leaves them out.
const STEP_DEFAULTS = { compensate: true, timeout_ms: 30000, max_attempts: 3, on_error: 'compensate', pivot: false, retry_backoff_ms: 1000 };

// One step of a definition: every key, a default one marked as such.
function definitionStep(step, index) {
  const key = (k, shown) => {
    const given = step[k] !== undefined && step[k] !== null;
    const v = given ? step[k] : STEP_DEFAULTS[k];
    return [el('dt', {}, k), el('dd', { data: { key: k } }, shown ? shown(v) : String(v),
      given ? null : el('span', { class: 'muted' }, ' (default)'))];
  };
  const ms = (v) => `${v} ms (${fmtDuration(v)})`;
  return el('li', { class: 'step def-step', data: { step: step.name } },
    el('span', { class: 'dot', 'aria-hidden': 'true' }, String(index + 1)),
    el('div', { class: 'step-body' },
      el('div', { class: 'step-head' }, el('span', { class: 'step-name' }, step.name), stepKeys(step)),
      el('dl', { class: 'keys' },
        [el('dt', {}, 'queue'), el('dd', { class: 'mono', data: { key: 'queue' } }, step.queue)],
        step.group ? [el('dt', {}, 'group'), el('dd', { class: 'mono', data: { key: 'group' } }, step.group)] : null,
        key('compensate'), key('timeout_ms', ms), key('max_attempts'), key('on_error'), key('pivot'),
        key('retry_backoff_ms', ms))));
}

// One version of one definition: its saga-wide keys, then its steps as the timeline shows them.
function definitionBody(d) {
  const facts = [
    ['version', String(d.version)],
    ['steps', String(d.steps.length)],
    ['deadline_ms', d.deadline_ms ? `${d.deadline_ms} ms (${fmtDuration(d.deadline_ms)} after the start)` : 'none'],
  ];
  return el('div', { class: 'def-version', data: { version: String(d.version) } },
    el('dl', { class: 'facts' }, facts.flatMap(([k, v]) => [el('dt', {}, k), el('dd', { data: { key: k } }, v)])),
    stageList(`def-steps-${d.name}`, d.steps, definitionStep));
}

// A saga type's card: the latest version, or an older one chosen in its select.
function definitionCard(latest, wantedVersion) {
  const name = latest.name;
  const body = el('div', { class: 'def-body' }, definitionBody(latest));
  const select = el('select', { id: `def-version-${name}`, data: { saga: name } },
    Array.from({ length: latest.version }, (_, i) => latest.version - i).map((v) =>
      el('option', { value: String(v) }, v === latest.version ? `v${v} (latest)` : `v${v}`)));
  async function show(v) {
    const q = new URLSearchParams({ saga: name, version: String(v) });
    history.replaceState(null, '', `/ui/definitions?${q}`);
    if (v === latest.version) {
      body.replaceChildren(definitionBody(latest));
      return;
    }
    body.replaceChildren(el('p', { class: 'muted' }, `Loading v${v}…`));
    try {
      const { status, body: d } = await getJson(`/definitions/${encodeURIComponent(name)}?version=${v}`);
      if (Number(select.value) !== v) return; // another version was chosen meanwhile
      body.replaceChildren(status === 200 && d
        ? definitionBody(d)
        : el('p', { class: 'error' }, d && d.error ? d.error : `GET /definitions/${name}?version=${v} answered ${status}`));
    } catch (e) {
      body.replaceChildren(el('p', { class: 'error' }, e.message));
    }
  }
  select.addEventListener('change', () => show(Number(select.value)));
  if (wantedVersion && wantedVersion !== latest.version && wantedVersion >= 1 && wantedVersion < latest.version) {
    select.value = String(wantedVersion);
    show(wantedVersion);
  }
  return el('section', { class: 'def-card', id: `def-${name}`, data: { saga: name } },
    el('div', { class: 'def-head' },
      el('h2', {}, el('span', { class: 'mono' }, name)),
      el('label', {}, 'Version ', select),
      el('a', { href: `/ui?${new URLSearchParams({ saga: name })}`, class: 'small' }, `its sagas →`)),
    body);
}

async function renderDefinitions() {
  document.title = 'Definitions · saga-service';
  const params = new URLSearchParams(location.search);
  const wanted = params.get('saga');
  const wantedVersion = Number(params.get('version')) || null;
  const title = el('h1', {}, 'Saga definitions');
  $('#main').replaceChildren(title, el('p', { class: 'muted' }, 'Loading…'));
  let status;
  let body;
  try {
    ({ status, body } = await getJson('/definitions'));
  } catch (e) {
    $('#main').replaceChildren(title, el('p', { id: 'defs-error', class: 'error' }, e.message));
    return;
  }
  if (status !== 200 || !body || !Array.isArray(body.definitions)) {
    const why = status === 404
      ? 'This service does not serve its definitions over HTTP (GET /definitions answered 404).'
      : body && body.error ? body.error : `GET /definitions answered ${status}`;
    $('#main').replaceChildren(title, el('p', { id: 'defs-error', class: 'error' }, why));
    return;
  }
  const defs = body.definitions.slice().sort((a, b) => a.name.localeCompare(b.name));
  const toc = el('nav', { class: 'def-toc', 'aria-label': 'Saga types' },
    defs.map((d) => el('a', { href: `#def-${d.name}`, class: 'mono' }, d.name)));
  $('#main').replaceChildren(title,
    el('p', { class: 'muted' }, `${defs.length} saga type${defs.length === 1 ? '' : 's'}, each at its latest version; choose a version to see an older one (a saga finishes on the version it started with).`),
    defs.length ? toc : null,
    el('div', { id: 'definitions' }, defs.map((d) => definitionCard(d, d.name === wanted ? wantedVersion : null))));
  const card = wanted && document.getElementById(`def-${wanted}`);
  if (card) card.scrollIntoView();
}

// ------------------------------------------------------------------ search and start-up

const UUID_RE = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;
const CODE_RE = /^[0-9A-Za-z]{1,22}$/;

async function search(ev) {
  ev.preventDefault();
  const q = $('#search-input').value.trim();
  if (!q) return;
  if (!UUID_RE.test(q) && !CODE_RE.test(q)) {
    showBanner(`"${q.slice(0, 60)}" is neither a UUID nor a base62 code.`);
    return;
  }
  try {
    const { status, body } = await getJson(`/sagas/${encodeURIComponent(q)}`);
    if (status === 200) {
      location.assign(`/ui/sagas/${encodeURIComponent(body.code)}`);
    } else if (status === 404) {
      showBanner(`No saga ${q}.`);
    } else {
      showBanner(body && body.error ? body.error : `GET /sagas/{id} answered ${status}`);
    }
  } catch (e) {
    showBanner(e.message);
  }
}

function start() {
  token.show();
  $('#forget-token').addEventListener('click', () => token.forget());
  $('#search').addEventListener('submit', search);
  $('#action-form').addEventListener('submit', submitAction);
  $('#action-cancel').addEventListener('click', () => $('#action-dialog').close());
  const m = location.pathname.match(/^\/ui\/sagas\/([^/]+)\/?$/);
  const onDefinitions = /^\/ui\/definitions\/?$/.test(location.pathname);
  for (const a of document.querySelectorAll('.top-nav a')) {
    const here = a.dataset.page === (onDefinitions ? 'definitions' : m ? '' : 'sagas');
    if (here) a.setAttribute('aria-current', 'page');
  }
  if (onDefinitions) {
    renderDefinitions();
  } else if (m) {
    sagaState.id = decodeURIComponent(m[1]);
    sagaState.older = [];
    $('#search-input').value = sagaState.id;
    sagaTick();
  } else {
    renderListShell();
    listTick();
  }
}

document.addEventListener('DOMContentLoaded', start);
