// Switchyard's operator console: plain ES module, no dependencies, no build step. Every action
// goes through the JSON API with the session cookie; writes send the session's CSRF token.
// Everything shown is built with DOM nodes (textContent), never parsed as HTML.

const main = document.getElementById('main');
let session = null;
// Which navigation is current: a page rendered for an earlier one is dropped.
let current = 0;

// ---- small helpers -------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function toast(message) {
  const t = document.getElementById('toast');
  t.textContent = message;
  setTimeout(() => { if (t.textContent === message) t.textContent = ''; }, 4000);
}

class Problem extends Error {
  constructor(body, status) {
    super(body?.detail || `request failed (${status})`);
    this.body = body || {};
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (session && method !== 'GET') headers['x-csrf-token'] = session.csrfToken;
  const response = await fetch(path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && !path.startsWith('/console/session')) {
    session = null;
    renderSignIn('Your session has ended; sign in again.');
    throw new Problem({ detail: 'signed out' }, 401);
  }
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new Problem(data, response.status);
  return data;
}

const tenantPath = (rest = '') => `/manage/tenants/${encodeURIComponent(session.tenantId)}${rest}`;
const enc = encodeURIComponent;
const when = (t) => (t ? new Date(t).toLocaleString() : '—');
const badge = (status) => h('span', { class: `badge ${status}` }, status);
const short = (id) => String(id).slice(-12);
const terminal = (s) => ['completed', 'failed', 'cancelled', 'timed_out', 'expired'].includes(s);

async function copy(text, what) {
  try {
    await navigator.clipboard.writeText(text);
    toast(`${what} copied`);
  } catch {
    toast(`Copy failed: select the ${what} and copy it by hand`);
  }
}

// Shows a problem+json under a form: the detail, and each schema violation by its pointer.
function showProblem(form, err) {
  form.querySelectorAll('.field-error').forEach((e) => e.remove());
  form.querySelectorAll('[aria-invalid]').forEach((e) => {
    e.removeAttribute('aria-invalid');
    e.removeAttribute('aria-describedby');
  });
  const detail = err instanceof Problem ? err.body.detail || err.message : String(err);
  const box = h('p', { class: 'field-error wide', role: 'alert' }, detail);
  // A message that names a member (`name`, `inputSchema`, …) marks that field and describes it.
  const named = /`([A-Za-z]+)`/.exec(detail || '');
  const field = named && form.querySelector(`[name="${named[1]}"]`);
  if (field) {
    const id = `error-${named[1]}`;
    field.setAttribute('aria-invalid', 'true');
    field.setAttribute('aria-describedby', id);
    field.closest('label').after(h('span', { class: 'field-error wide', id, role: 'alert' }, detail));
  } else {
    form.append(box);
  }
}

function jsonField(form, name) {
  const raw = form.elements[name].value.trim();
  if (!raw) return undefined;
  try {
    return JSON.parse(raw);
  } catch (e) {
    throw new Problem({ detail: `\`${name}\` is not valid JSON: ${e.message}` }, 400);
  }
}

// Shows a page, unless the user has moved on (`seq` is not the current navigation). Returns
// whether it did.
function page(seq, title, ...content) {
  if (seq !== current) return false;
  main.replaceChildren(h('h1', {}, title), ...content);
  document.title = `${typeof title === 'string' ? title : 'Run'} · Switchyard console`;
  return true;
}

// A button's click, with any failure shown instead of lost.
function act(fn) {
  return async () => {
    try { await fn(); } catch (err) { if (!(err instanceof Problem && err.status === 401)) toast(err.message); }
  };
}

// ---- sign in and out -----------------------------------------------------------------------

function renderSignIn(note) {
  document.getElementById('nav').hidden = true;
  document.getElementById('sign-out').hidden = true;
  document.getElementById('who').textContent = '';
  const form = h('form', { class: 'panel signin', id: 'sign-in' },
    h('h1', {}, 'Sign in'),
    note ? h('p', { class: 'muted' }, note) : null,
    h('p', { class: 'muted' }, 'Use an API key with the manage scope. It is exchanged for a session; the key is not kept in the browser.'),
    h('label', {}, 'API key', h('input', { name: 'key', type: 'password', autocomplete: 'off', required: true })),
    h('p', {}, h('button', { type: 'submit' }, 'Sign in')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      session = await api('POST', '/console/session', { key: form.elements.key.value });
      form.reset();
      start();
    } catch (err) {
      showProblem(form, err);
    }
  });
  main.replaceChildren(form);
  form.elements.key.focus();
}

document.getElementById('sign-out').addEventListener('click', async () => {
  try { await api('DELETE', '/console/session'); } catch { /* signed out either way */ }
  session = null;
  location.hash = '';
  renderSignIn('Signed out.');
});

// ---- runs ----------------------------------------------------------------------------------

const streams = new Set();
function closeStreams() {
  for (const s of streams) s.close();
  streams.clear();
}

// Follows a run's events (SSE); `on(event)` for each, closed at the run's end.
function follow(runId, on) {
  const source = new EventSource(`/v1/runs/${enc(runId)}/events`);
  streams.add(source);
  const handle = (msg) => {
    const event = JSON.parse(msg.data);
    on(event);
    if (event.type === 'status' && terminal(event.data.status)) {
      source.close();
      streams.delete(source);
    }
  };
  for (const type of ['status', 'delta', 'tool_call', 'tool_result', 'artifact', 'error', 'completed']) {
    source.addEventListener(type, handle);
  }
  return source;
}

function runLabel(run, link = true) {
  const viaApi = run.environment === 'api' || !run.triggerId;
  // A list row is a summary (`messagePreview`); a run read by id has its whole `message`.
  const said = run.message ?? run.messagePreview;
  const text = said ? said.slice(0, 60) : `run ${short(run.id)}`;
  return h('span', {}, viaApi ? h('span', { class: 'api' }, '[API]') : null,
    link ? h('a', { href: `#/runs/${run.id}` }, text) : text);
}

// The tenant's runs queued and running now, and its scheduling settings; only a key that may
// read its tenant (tenant-wide, with `manage`) sees them.
async function tenantUsage() {
  let t;
  try {
    ({ data: t } = await api('GET', tenantPath()));
  } catch {
    return null;
  }
  const parts = [`${t.queued} queued`, `${t.running} running`];
  if (t.maxRunning) parts[1] += ` (at most ${t.maxRunning})`;
  if (t.maxQueued) parts[0] += ` (at most ${t.maxQueued})`;
  parts.push(`weight ${t.weight}`);
  return h('p', { class: 'panel', id: 'tenant-usage', 'aria-label': 'Your tenant now' }, parts.join(' · '));
}

async function renderRuns(params, seq = current) {
  const q = new URLSearchParams(params);
  const form = h('form', { class: 'panel grid', id: 'run-filters', 'aria-label': 'Filter runs' },
    h('label', {}, 'Status', h('select', { name: 'status' },
      ['', 'queued', 'running', 'completed', 'failed', 'cancelled', 'timed_out', 'expired']
        .map((s) => h('option', { value: s, selected: q.get('status') === s }, s || 'any')))),
    h('label', {}, 'Agent', h('input', { name: 'agentId', value: q.get('agentId') || '' })),
    h('label', {}, 'Trigger', h('input', { name: 'triggerId', value: q.get('triggerId') || '' })),
    h('label', {}, 'Environment', h('input', { name: 'environment', value: q.get('environment') || '' })),
    h('label', {}, 'Since', h('input', { name: 'since', type: 'datetime-local', value: q.get('since') || '' })),
    h('p', {}, h('button', { type: 'submit' }, 'Filter')));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const next = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) next.set(k, v);
    location.hash = `#/runs?${next}`;
  });
  const query = new URLSearchParams();
  for (const [k, v] of q) {
    if (!v) continue;
    query.set(k, k === 'since' ? new Date(v).toISOString() : v);
  }
  const { data } = await api('GET', `/v1/runs?${query}`);
  const usage = await tenantUsage();
  const rows = data.map((run) => h('tr', { dataset: { run: run.id } },
    h('td', {}, runLabel(run)),
    h('td', { class: 'status' }, badge(run.status)),
    h('td', {}, run.agentId),
    h('td', {}, run.triggerId || '—'),
    h('td', {}, run.environment || '—'),
    h('td', {}, when(run.createdAt))));
  const table = h('table', { id: 'runs' },
    h('caption', { class: 'muted' }, `The latest ${data.length === 1 ? 'run' : `${data.length} runs`}; runs still going update as they go`),
    h('thead', {}, h('tr', {}, ['Run', 'Status', 'Agent', 'Trigger', 'Environment', 'Created'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows));
  if (!page(seq, 'Runs', usage, form, data.length ? table : h('p', { class: 'panel muted' }, 'No runs match.'))) return;
  // Live status for the runs still going: two streams at most, so that a browser's few
  // connections to one host stay free for everything else.
  for (const run of data.filter((r) => !terminal(r.status)).slice(0, 2)) {
    follow(run.id, (event) => {
      if (event.type !== 'status') return;
      const cell = table.querySelector(`tr[data-run="${run.id}"] td.status`);
      if (cell) cell.replaceChildren(badge(event.data.status));
    });
  }
}

async function renderRun(id, seq = current) {
  const run = await api('GET', `/v1/runs/${enc(id)}`);
  const status = h('span', { id: 'run-status', 'aria-live': 'polite' }, badge(run.status));
  const facts = h('dl', { class: 'facts' },
    h('dt', {}, 'Status'), h('dd', {}, status),
    h('dt', {}, 'Agent'), h('dd', {}, run.agentId),
    h('dt', {}, 'Trigger'), h('dd', {}, run.triggerId || '— (API)'),
    h('dt', {}, 'Environment'), h('dd', {}, run.environment || '—'),
    h('dt', {}, 'Created'), h('dd', {}, when(run.createdAt)),
    h('dt', {}, 'Started'), h('dd', { id: 'run-started' }, when(run.startedAt)),
    h('dt', {}, 'Finished'), h('dd', { id: 'run-finished' }, when(run.completedAt)),
    h('dt', {}, 'Attempts'), h('dd', {}, String(run.attempt)),
    h('dt', {}, 'Trace id'), h('dd', { class: 'mono' }, run.traceId || '— (tracing was off)'));
  const thread = h('ol', { class: 'thread', id: 'thread' },
    h('li', { class: 'user' }, h('div', { class: 'role' }, 'message'),
      run.message ? h('div', {}, run.message) : h('pre', {}, JSON.stringify(run.inputs, null, 2))));
  let answer = null;
  const item = (cls, role, body, at) => h('li', { class: cls },
    h('div', { class: 'role' }, h('span', {}, role), h('span', {}, at ? new Date(at).toLocaleTimeString() : '')), body);
  const deliveries = h('div', { id: 'deliveries' });
  if (!page(seq, runLabel(run, false), h('div', { class: 'panel' }, facts), h('h2', {}, 'Thread'), thread,
    h('h2', {}, 'Webhook deliveries'), deliveries)) return;
  follow(run.id, (event) => {
    const d = event.data;
    switch (event.type) {
      case 'delta':
        if (!answer) {
          answer = h('div', { id: 'answer' });
          thread.append(item('assistant', 'agent', answer, event.createdAt));
        }
        answer.append(d.text);
        break;
      case 'tool_call':
        thread.append(item('tool', `tool call · ${d.name}`, h('pre', {}, JSON.stringify(d.arguments, null, 2)), event.createdAt));
        answer = null;
        break;
      case 'tool_result':
        thread.append(item('tool', `tool result · ${d.name}`, h('pre', {}, JSON.stringify(d.result ?? d.error, null, 2)), event.createdAt));
        break;
      case 'artifact':
        thread.append(item('tool', `artifact · ${d.name}`, h('pre', {}, d.text ?? JSON.stringify(d.json ?? `${d.size} bytes`, null, 2)), event.createdAt));
        break;
      case 'error':
        thread.append(item('error', `error · ${d.errorCode}`, d.message, event.createdAt));
        break;
      case 'completed':
        thread.append(item('assistant', 'result', h('pre', {}, JSON.stringify(d.result, null, 2)), event.createdAt));
        break;
      case 'status':
        status.replaceChildren(badge(d.status));
        // A try that starts over streams its text anew.
        answer = null;
        if (d.status === 'running' && !run.startedAt) document.getElementById('run-started').textContent = when(event.createdAt);
        thread.append(h('li', { class: 'status' }, `${new Date(event.createdAt).toLocaleTimeString()} · ${d.status}${d.retrying ? ' (retrying)' : ''}`));
        if (terminal(d.status)) {
          document.getElementById('run-finished').textContent = when(event.createdAt);
          setTimeout(() => loadDeliveries(run.id, deliveries).catch(() => {}), 300);
        }
        break;
      default:
    }
  });
  loadDeliveries(run.id, deliveries).catch((err) => deliveries.replaceChildren(h('p', { class: 'field-error' }, err.message)));
}

async function loadDeliveries(runId, box) {
  const { data } = await api('GET', tenantPath(`/deliveries?runId=${enc(runId)}&limit=50`));
  if (!data.length) {
    box.replaceChildren(h('p', { class: 'muted' }, 'No deliveries yet.'));
    return;
  }
  const rows = await Promise.all(data.map(async (d) => {
    const full = (await api('GET', tenantPath(`/deliveries/${enc(d.id)}`))).data;
    const attempts = (full.attempts || []).map((a) =>
      `#${a.attempt} ${a.responseStatus ?? a.error ?? ''} ${a.latencyMs ?? ''} ms`).join(', ');
    const redeliver = h('button', { type: 'button', class: 'small', 'aria-label': `Redeliver ${d.eventType}`, onclick: act(async () => {
      await api('POST', tenantPath(`/deliveries/${enc(d.id)}/redeliver`));
      toast('Redelivery queued');
      setTimeout(() => loadDeliveries(runId, box).catch(() => {}), 1200);
    }) }, 'Redeliver');
    return h('tr', { dataset: { delivery: d.id } },
      h('td', {}, d.eventType), h('td', {}, badge(d.status)),
      h('td', {}, d.endpointId || 'run webhookUrl'), h('td', { class: 'attempts' }, String(d.attemptCount)),
      h('td', { class: 'muted' }, attempts || '—'), h('td', {}, redeliver));
  }));
  box.replaceChildren(h('table', { id: 'delivery-table' },
    h('thead', {}, h('tr', {}, ['Event', 'Status', 'To', 'Attempts', 'Answers', 'Actions'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows)));
}

// ---- triggers ------------------------------------------------------------------------------

// The trigger being edited in the form, if any: {project, agent, trigger}.
let editing = null;

async function renderTriggers(seq = current) {
  const { data: projects } = await api('GET', tenantPath('/projects?limit=100'));
  const agents = [];
  for (const p of projects) {
    const { data } = await api('GET', tenantPath(`/projects/${enc(p.id)}/agents?limit=100`));
    for (const a of data) agents.push({ project: p.id, agent: a.id, name: a.name });
  }
  const sections = [];
  for (const a of agents) {
    const { data: triggers } = await api('GET', tenantPath(`/projects/${enc(a.project)}/agents/${enc(a.agent)}/triggers?limit=100`));
    if (!triggers.length) continue;
    sections.push(h('h2', {}, `${a.project} → ${a.name}`), h('table', {},
      h('thead', {}, h('tr', {}, ['Trigger', 'Key', 'State', 'Actions'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, triggers.map((t) => triggerRow(a, t)))));
  }
  const form = h('form', { class: 'panel grid', id: 'new-trigger', 'aria-label': 'New trigger' },
    h('label', {}, 'Agent', h('select', { name: 'agent', required: true },
      agents.map((a) => h('option', { value: `${a.project}/${a.agent}` }, `${a.project} → ${a.name}`)))),
    h('label', {}, 'Id', h('input', { name: 'id', placeholder: 'order-created' })),
    h('label', {}, 'Name', h('input', { name: 'name', required: true })),
    h('label', {}, 'Key', h('input', { name: 'key', placeholder: 'defaults to the id' })),
    h('label', { class: 'wide' }, 'Message template', h('input', { name: 'messageTemplate', placeholder: 'New order {{order.id}} from {{customer.name}}' })),
    h('label', { class: 'wide' }, 'Input schema (JSON Schema)', h('textarea', { name: 'inputSchema', placeholder: '{"type": "object", "required": ["order"]}' })),
    h('label', { class: 'wide' }, 'Filters (JSON)', h('textarea', { name: 'filters', placeholder: '{"pointer": "/event", "op": "equals", "value": "push"}' })),
    h('label', { class: 'check wide' }, h('input', { name: 'waitForResponse', type: 'checkbox' }), 'Wait for the response'),
    h('p', { class: 'actions' },
      h('button', { type: 'submit' }, editing ? 'Save trigger' : 'Create trigger'),
      editing ? h('button', { type: 'button', class: 'quiet', onclick: () => { editing = null; renderTriggers(); } }, 'Cancel') : null));
  if (editing) {
    const t = editing.trigger;
    const f = form.elements;
    f.agent.value = `${editing.project}/${editing.agent}`;
    f.agent.disabled = true;
    f.id.value = t.id;
    f.id.disabled = true;
    f.name.value = t.name;
    f.key.value = t.key;
    f.messageTemplate.value = t.messageTemplate || '';
    // `false` is a schema too (it refuses every body): only a missing one is empty.
    f.inputSchema.value = t.inputSchema != null ? JSON.stringify(t.inputSchema, null, 2) : '';
    f.filters.value = t.filters != null ? JSON.stringify(t.filters, null, 2) : '';
    f.waitForResponse.checked = t.waitForResponse;
  }
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const [project, agent] = form.elements.agent.value.split('/');
      const body = { name: form.elements.name.value };
      for (const k of ['id', 'key', 'messageTemplate']) {
        if (form.elements[k].value) body[k] = form.elements[k].value;
        else if (editing && k !== 'id') body[k] = null;
      }
      const schema = jsonField(form, 'inputSchema');
      body.inputSchema = schema === undefined ? (editing ? null : undefined) : schema;
      const filters = jsonField(form, 'filters');
      body.filters = filters === undefined ? (editing ? null : undefined) : filters;
      body.waitForResponse = form.elements.waitForResponse.checked;
      if (editing) {
        delete body.id;
        if (body.key === null) delete body.key;
        const t = editing.trigger;
        await api('PATCH', tenantPath(`/projects/${enc(editing.project)}/agents/${enc(editing.agent)}/triggers/${enc(t.id)}`), body);
        editing = null;
        toast('Trigger saved');
      } else {
        await api('POST', tenantPath(`/projects/${enc(project)}/agents/${enc(agent)}/triggers`), body);
        toast('Trigger created');
      }
      renderTriggers();
    } catch (err) { showProblem(form, err); }
  });
  if (!page(seq, 'Triggers', h('h2', {}, editing ? `Edit ${editing.trigger.name}` : 'New trigger'), agents.length ? form : h('p', { class: 'panel muted' }, 'Create a project and an agent first (management API).'),
    ...(sections.length ? sections : [h('p', { class: 'muted' }, 'No triggers yet.')]))) return;
  if (editing) form.elements.name.focus();
}

function triggerRow(a, t) {
  const base = tenantPath(`/projects/${enc(a.project)}/agents/${enc(a.agent)}/triggers/${enc(t.id)}`);
  const url = `${location.origin}/api/v1.0/project/${enc(a.project)}/trigger/${enc(t.key)}`;
  const curl = `curl -X POST '${url}' -H "x-api-key: $SWITCHYARD_KEY" -H 'content-type: application/json' -d '{}'`;
  return h('tr', { dataset: { trigger: t.id } },
    h('td', {}, h('strong', {}, t.name), h('div', { class: 'muted mono' }, t.id)),
    h('td', { class: 'mono' }, t.key),
    h('td', {}, badge(t.enabled ? 'enabled' : 'paused')),
    h('td', {}, h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'small quiet', onclick: () => copy(url, 'invocation URL') }, 'Copy URL'),
      h('button', { type: 'button', class: 'small quiet', onclick: () => copy(curl, 'curl') }, 'Copy curl'),
      h('a', { href: `#/invocations/${enc(a.project)}/${enc(a.agent)}/${enc(t.id)}` }, 'Invocations'),
      h('button', { type: 'button', class: 'small quiet', 'aria-label': `Edit ${t.name}`, onclick: () => {
        editing = { project: a.project, agent: a.agent, trigger: t };
        renderTriggers();
      } }, 'Edit'),
      h('button', { type: 'button', class: 'small', 'aria-label': `${t.enabled ? 'Pause' : 'Enable'} ${t.name}`, onclick: act(async () => {
        await api('PATCH', base, { enabled: !t.enabled }); await renderTriggers();
      }) }, t.enabled ? 'Pause' : 'Enable'),
      h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete ${t.name}`, onclick: act(async () => {
        if (!confirm(`Delete trigger ${t.name}?`)) return;
        await api('DELETE', base); await renderTriggers();
      }) }, 'Delete'))));
}

async function renderInvocations(project, agent, trigger, seq = current) {
  const { data } = await api('GET', tenantPath(`/projects/${enc(project)}/agents/${enc(agent)}/triggers/${enc(trigger)}/invocations?limit=100`));
  const rows = data.map((i) => h('tr', {},
    h('td', {}, when(i.createdAt)),
    h('td', {}, badge(i.outcome), ' ', badge(i.status)),
    h('td', {}, i.runId ? h('a', { href: `#/runs/${i.runId}` }, short(i.runId)) : '—'),
    h('td', {}, i.environment || '—'),
    h('td', {}, i.errorMessage || '')));
  page(seq, `Invocations of ${trigger}`, data.length ? h('table', {},
    h('thead', {}, h('tr', {}, ['When', 'Outcome and status', 'Run', 'Environment', 'Reason'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows)) : h('p', { class: 'panel muted' }, 'No invocations yet.'));
}

// ---- keys, credentials, endpoints ----------------------------------------------------------

async function renderKeys(shown, seq = current) {
  const { data } = await api('GET', tenantPath('/api-keys?limit=100'));
  const form = h('form', { class: 'panel grid', id: 'new-key', 'aria-label': 'New API key' },
    h('label', {}, 'Name', h('input', { name: 'name', required: true })),
    h('fieldset', {}, h('legend', {}, 'Scopes'),
      ['trigger', 'runs:read', 'manage'].map((s) => h('label', { class: 'check' },
        h('input', { type: 'checkbox', name: 'scopes', value: s, checked: s !== 'manage' }), s))),
    h('p', {}, h('button', { type: 'submit' }, 'Create key')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const scopes = [...form.querySelectorAll('input[name=scopes]:checked')].map((i) => i.value);
      const made = await api('POST', tenantPath('/api-keys'), { name: form.elements.name.value, scopes });
      renderKeys(made.data);
    } catch (err) { showProblem(form, err); }
  });
  const secret = shown ? h('div', { class: 'secret', id: 'new-secret', role: 'alert' },
    h('span', {}, 'Shown once: '), h('code', { id: 'new-key-value' }, shown.key),
    h('button', { type: 'button', class: 'small', onclick: () => copy(shown.key, 'key') }, 'Copy')) : null;
  const rows = data.map((k) => h('tr', {},
    h('td', {}, k.name), h('td', { class: 'mono' }, k.prefix), h('td', {}, k.scopes.join(', ')),
    h('td', {}, when(k.lastUsedAt)), h('td', {}, k.revokedAt ? badge('revoked') : badge('enabled')),
    h('td', {}, k.revokedAt ? '' : h('button', { type: 'button', class: 'small danger', 'aria-label': `Revoke key ${k.name}`, onclick: act(async () => {
      if (!confirm(`Revoke key ${k.name}?`)) return;
      await api('DELETE', tenantPath(`/api-keys/${enc(k.id)}`)); await renderKeys();
    }) }, 'Revoke'))));
  page(seq, 'API keys', secret, form, h('table', {},
    h('thead', {}, h('tr', {}, ['Name', 'Prefix', 'Scopes', 'Last used', 'State', 'Actions'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows)));
}

async function renderCredentials(seq = current) {
  const { data } = await api('GET', tenantPath('/credentials?limit=100'));
  const form = h('form', { class: 'panel grid', 'aria-label': 'New credential' },
    h('label', {}, 'Id', h('input', { name: 'id', required: true })),
    h('label', {}, 'Name', h('input', { name: 'name', required: true })),
    h('label', {}, 'Type', h('select', { name: 'type' }, ['generic', 'api_key', 'webhook_secret', 'signing_secret'].map((t) => h('option', { value: t }, t)))),
    h('label', {}, 'Value (never shown again)', h('input', { name: 'value', type: 'password', autocomplete: 'off', required: true })),
    h('p', {}, h('button', { type: 'submit' }, 'Save credential')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const f = form.elements;
      await api('POST', tenantPath('/credentials'), { id: f.id.value, name: f.name.value, type: f.type.value, value: f.value.value });
      toast('Credential saved'); renderCredentials();
    } catch (err) { showProblem(form, err); }
  });
  page(seq, 'Credentials', form, h('table', {},
    h('thead', {}, h('tr', {}, ['Id', 'Name', 'Type', 'Updated'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, data.map((c) => h('tr', {}, h('td', { class: 'mono' }, c.id), h('td', {}, c.name), h('td', {}, c.type), h('td', {}, when(c.updatedAt)))))));
}

async function renderEndpoints(seq = current) {
  const { data } = await api('GET', tenantPath('/webhook-endpoints?limit=100'));
  const form = h('form', { class: 'panel grid', 'aria-label': 'New webhook endpoint' },
    h('label', {}, 'Id', h('input', { name: 'id' })),
    h('label', { class: 'wide' }, 'URL', h('input', { name: 'url', type: 'url', required: true })),
    h('label', {}, 'Event types', h('input', { name: 'eventTypes', value: '*' })),
    h('p', {}, h('button', { type: 'submit' }, 'Add endpoint')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const f = form.elements;
      const body = { url: f.url.value, eventTypes: f.eventTypes.value.split(',').map((s) => s.trim()).filter(Boolean) };
      if (f.id.value) body.id = f.id.value;
      const made = await api('POST', tenantPath('/webhook-endpoints'), body);
      await renderEndpoints();
      showSecret(made.data.id);
    } catch (err) { showProblem(form, err); }
  });
  const rows = data.map((e) => {
    const base = tenantPath(`/webhook-endpoints/${enc(e.id)}`);
    const button = (label, fn, cls = 'small quiet') => h('button', { type: 'button', class: cls, 'aria-label': `${label}: ${e.id}`, onclick: act(async () => {
      await fn(); await renderEndpoints();
    }) }, label);
    return h('tr', {},
      h('td', {}, h('div', { class: 'mono' }, e.id), h('div', { class: 'muted' }, e.url)),
      h('td', {}, e.eventTypes.join(', ')),
      h('td', {}, badge(e.enabled ? 'enabled' : 'disabled')),
      h('td', {}, h('div', { class: 'actions' },
        button(e.enabled ? 'Disable' : 'Enable', () => api('PATCH', base, { enabled: !e.enabled })),
        button('Show secret', async () => showSecret(e.id)),
        button('Rotate secret', async () => { await api('POST', `${base}/secret/rotate`); toast('Secret rotated; the old one signs for the overlap'); }),
        button('Recover', async () => {
          const since = new Date(Date.now() - 24 * 3600 * 1000).toISOString();
          const r = await api('POST', `${base}/recover`, { since });
          toast(`Recovered ${r.data.recovered} deliveries`);
        }),
        h('a', { href: `#/endpoint-deliveries/${enc(e.id)}` }, 'Deliveries'))));
  });
  page(seq, 'Webhook endpoints', form, data.length ? h('table', {},
    h('thead', {}, h('tr', {}, ['Endpoint', 'Events', 'State', 'Actions'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows)) : h('p', { class: 'panel muted' }, 'No endpoints yet.'));
}

// Shows an endpoint's signing secret (what its receiver verifies with) above the page.
async function showSecret(id) {
  const { data } = await api('GET', tenantPath(`/webhook-endpoints/${enc(id)}/secret`));
  main.querySelector('.secret')?.remove();
  main.querySelector('h1').after(h('div', { class: 'secret', role: 'alert' },
    h('span', {}, `Signing secret of ${id}: `), h('code', {}, data.key),
    h('button', { type: 'button', class: 'small', onclick: () => copy(data.key, 'secret') }, 'Copy')));
}

async function renderEndpointDeliveries(id, seq = current) {
  const { data } = await api('GET', tenantPath(`/deliveries?endpointId=${enc(id)}&limit=50`));
  page(seq, `Deliveries to ${id}`, data.length ? h('table', {},
    h('thead', {}, h('tr', {}, ['Event', 'Status', 'Run', 'Attempts', 'Last error', 'Actions'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, data.map((d) => h('tr', {},
      h('td', {}, d.eventType), h('td', {}, badge(d.status)),
      h('td', {}, d.runId ? h('a', { href: `#/runs/${d.runId}` }, short(d.runId)) : '—'),
      h('td', {}, String(d.attemptCount)), h('td', { class: 'muted' }, d.lastError || ''),
      h('td', {}, h('button', { type: 'button', class: 'small', 'aria-label': `Redeliver ${d.eventType}`, onclick: act(async () => {
        await api('POST', tenantPath(`/deliveries/${enc(d.id)}/redeliver`)); toast('Redelivery queued');
      }) }, 'Redeliver')))))) : h('p', { class: 'panel muted' }, 'No deliveries yet.'));
}

// ---- routing -------------------------------------------------------------------------------

async function route() {
  if (!session) return;
  // Only `#/…` names a page (the skip link's `#main` does not).
  if (location.hash && !location.hash.startsWith('#/')) return;
  closeStreams();
  editing = null;
  const seq = ++current;
  const [path, query] = (location.hash.slice(1) || '/runs').split('?');
  let parts;
  try {
    parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  } catch {
    parts = [];
  }
  for (const a of document.querySelectorAll('#nav a')) {
    const here = a.getAttribute('href').slice(2) === parts[0] || (parts[0] === 'invocations' && a.getAttribute('href') === '#/triggers');
    if (here) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  try {
    switch (parts[0]) {
      case 'runs': return await (parts[1] ? renderRun(parts[1], seq) : renderRuns(query || '', seq));
      case 'triggers': return await renderTriggers(seq);
      case 'invocations': return await renderInvocations(parts[1], parts[2], parts[3], seq);
      case 'keys': return await renderKeys(undefined, seq);
      case 'credentials': return await renderCredentials(seq);
      case 'endpoints': return await renderEndpoints(seq);
      case 'endpoint-deliveries': return await renderEndpointDeliveries(parts[1], seq);
      default: return await renderRuns('', seq);
    }
  } catch (err) {
    if (err instanceof Problem && err.status === 401) return undefined;
    const title = err instanceof Problem && err.status === 403 ? 'Not allowed with this key' : 'Something went wrong';
    return page(seq, title, h('p', { class: 'panel field-error', role: 'alert' }, err.message));
  }
}

function start() {
  document.getElementById('nav').hidden = false;
  document.getElementById('sign-out').hidden = false;
  document.getElementById('who').textContent = `${session.tenantId} · ${session.keyName}`;
  if (!location.hash) location.hash = '#/runs';
  route();
}

window.addEventListener('hashchange', route);
document.querySelector('.skip').addEventListener('click', (ev) => {
  ev.preventDefault();
  main.focus();
});
(async () => {
  try {
    session = await api('GET', '/console/session');
    start();
  } catch {
    renderSignIn();
  }
})();
