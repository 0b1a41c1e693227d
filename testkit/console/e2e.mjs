// The console's browser test: headless Debian Chromium driven by playwright-core. Signs in,
// creates a trigger (after an inline validation error) and a key, invokes the trigger with curl,
// watches the run complete live, opens its thread, redelivers its webhook, signs out; saves a
// screenshot of each main page. Settings come from the environment (see testkit/tests/console.rs).
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

const { BASE_URL, MANAGE_KEY, PROJECT, NODE_DIR, SHOTS } = process.env;
const { chromium } = await import(path.join(NODE_DIR, 'node_modules/playwright-core/index.mjs'));
mkdirSync(SHOTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
const page = await context.newPage();
const problems = [];
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
// Refused API calls (the 422 this test provokes) are the app's to show; a script error or a
// server error is a failure.
page.on('console', (m) => {
  if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(`console: ${m.text()}`);
});
page.on('response', (r) => { if (r.status() >= 500) problems.push(`${r.status()} from ${r.url()}`); });
const shot = (name) => page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
const step = (what) => console.error(`[console] ${what}`);

try {
  step('sign in');
  await page.goto(`${BASE_URL}/console`);
  await page.getByLabel('API key').fill(MANAGE_KEY);
  if (await page.locator('#nav').isVisible()) throw new Error('the sections show before signing in');
  await shot('sign-in');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('navigation', { name: 'Sections' }).waitFor();

  step('create a trigger: first with a schema the server refuses, shown inline');
  await page.getByRole('link', { name: 'Triggers' }).click();
  const form = page.locator('#new-trigger');
  await form.getByLabel('Id').fill('order-created');
  await form.getByLabel('Name').fill('Order created');
  await form.getByLabel('Message template').fill('Ship order {{order.id}} today');
  await form.getByLabel('Input schema (JSON Schema)').fill('{"type": "nope"}');
  await form.getByRole('button', { name: 'Create trigger' }).click();
  await form.locator('.field-error').first().waitFor();
  if ((await form.getByLabel('Input schema (JSON Schema)').getAttribute('aria-invalid')) !== 'true') {
    throw new Error('the refused inputSchema is not marked invalid');
  }
  await shot('trigger-error');
  await form.getByLabel('Input schema (JSON Schema)').fill('{"type": "object", "required": ["order"]}');
  await form.getByRole('button', { name: 'Create trigger' }).click();
  await page.locator('tr[data-trigger="order-created"]').waitFor();
  await page.getByRole('heading', { name: 'New trigger' }).waitFor();
  await shot('triggers');
  step('edit it');
  await page.locator('tr[data-trigger="order-created"]').getByRole('button', { name: 'Edit' }).click();
  await page.getByRole('heading', { name: 'Edit Order created' }).waitFor();
  await form.getByLabel('Name').fill('Order created (v2)');
  await form.getByRole('button', { name: 'Save trigger' }).click();
  await page.locator('tr[data-trigger="order-created"] strong', { hasText: 'Order created (v2)' }).waitFor();

  step('create a key, shown once');
  await page.getByRole('link', { name: 'API keys' }).click();
  await page.locator('#new-key').getByLabel('Name').fill('ci');
  await page.locator('#new-key').getByRole('button', { name: 'Create key' }).click();
  const key = (await page.locator('#new-key-value').textContent()).trim();
  if (!key.startsWith('sy_')) throw new Error(`no key shown: ${key}`);
  await shot('keys');

  step('invoke the trigger with curl');
  const answer = execFileSync('curl', ['-sS', '-X', 'POST',
    `${BASE_URL}/api/v1.0/project/${PROJECT}/trigger/order-created`,
    '-H', `x-api-key: ${key}`, '-H', 'content-type: application/json',
    '-d', '{"order": {"id": "A-17"}}'], { encoding: 'utf8' });
  const run = JSON.parse(answer);
  if (!run.id) throw new Error(`no run: ${answer}`);

  step('watch it complete live in the list, then open its thread');
  await page.getByRole('link', { name: 'Runs' }).click();
  const row = page.locator(`tr[data-run="${run.id}"]`);
  await row.waitFor();
  if (!(await row.locator('.api').count())) throw new Error('an API invocation lacks the [API] prefix');
  const usage = await page.locator('#tenant-usage').textContent();
  if (!/^\d+ queued · \d+ running · weight 1$/.test(usage)) throw new Error(`the tenant's counts read "${usage}"`);
  const before = (await row.locator('.badge').textContent()).trim();
  if (before === 'completed') throw new Error('the run ended before the list showed it; nothing to watch');
  await page.evaluate(() => { window.notReloaded = true; });
  await row.locator('.badge.completed').waitFor({ timeout: 20000 });
  if (!(await page.evaluate(() => window.notReloaded))) throw new Error('the list reloaded');
  await shot('runs');
  await row.getByRole('link').click();
  await page.locator('#run-status .badge.completed').waitFor({ timeout: 20000 });
  const said = await page.locator('#answer').textContent();
  if (said !== 'Ship order A-17 today') throw new Error(`the thread shows "${said}"`);

  step('redeliver its webhook');
  const delivery = page.locator('#delivery-table tbody tr').first();
  await delivery.locator('.badge.delivered').waitFor({ timeout: 20000 });
  await shot('run');
  await delivery.getByRole('button', { name: 'Redeliver' }).click();
  await page.locator('#delivery-table tbody tr td.attempts', { hasText: '2' }).waitFor({ timeout: 20000 });

  step('the other pages');
  await page.getByRole('link', { name: 'Webhook endpoints' }).click();
  await page.getByRole('heading', { name: 'Webhook endpoints' }).waitFor();
  await shot('endpoints');
  await page.getByRole('link', { name: 'Triggers' }).click();
  await page.getByRole('link', { name: 'Invocations' }).first().click();
  await page.getByRole('heading', { name: /Invocations of/ }).waitFor();
  await shot('invocations');

  step('sign out');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  if (problems.length) throw new Error(problems.join('\n'));
  console.log(JSON.stringify({ runId: run.id, key }));
} catch (err) {
  await shot('failure').catch(() => {});
  console.error(err);
  process.exitCode = 1;
} finally {
  await browser.close();
}
