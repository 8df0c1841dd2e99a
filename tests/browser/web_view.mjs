// The agentguard web view in a real browser: Debian's Chromium, headless,
// driven by playwright-core. Run by tests/tests/web_view.rs, which starts
// the daemon, the upstream and the agent commands, and passes them here:
//
//   WEB_URL         the web view (its certificate is trusted through the
//                   NSS database under $HOME, as a user's browser would)
//   USERS           {"approver": [name, password], "auditor": [name, password]}
//   AGENT           the agent's name
//   AGENT_GET       argv of an agent command whose GET must appear live
//   AGENT_HELD      argv of an agent command whose POST waits for approval
//   AGENT_AFTER     argv of an agent command run after the revocation
//   TAMPER          argv that edits one stored event, as an intruder would,
//                   and TAMPERED_SEQ, its sequence number
//   SCREENSHOTS     where to write one PNG per page
//   USER_DATA_DIR   a fresh, empty Chromium profile
//
// Each step prints `step: ...`; any failure exits 1 with the reason.

import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const URL = env('WEB_URL');
const USERS = JSON.parse(env('USERS'));
const AGENT = env('AGENT');
const SHOTS = env('SCREENSHOTS');
mkdirSync(SHOTS, { recursive: true });
const TIMEOUT = 15000;

function step(what) { console.log(`step: ${what}`); }

function fail(why) { throw new Error(why); }

/** Runs an agent command; resolves with { code, stdout } (bounded: 60 s). */
function run(argv) {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`${argv.join(' ')}: still running after 60 s`)); }, 60000);
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

async function signIn(page, [name, password]) {
  await page.goto(URL);
  await page.locator('#login-name').fill(name);
  await page.locator('#login-password').fill(password);
  await page.locator('#login-submit').click();
  await page.locator('#nav').waitFor({ state: 'visible' });
}

const browser = await chromium.launchPersistentContext(env('USER_DATA_DIR'), {
  executablePath: '/usr/bin/chromium',
  headless: true,
  // As this machine needs: no sandbox as root, no GPU, no network of
  // Chromium's own (its background connections are refused here).
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1400, height: 900 },
});
browser.setDefaultTimeout(TIMEOUT);

try {
  const page = await browser.newPage();

  // Sign-in: a wrong password is refused (and recorded), the right one
  // opens the events page.
  await page.goto(URL);
  await page.locator('#login-name').waitFor();
  await shot(page, 'login');
  await page.locator('#login-name').fill(USERS.approver[0]);
  await page.locator('#login-password').fill('not the password');
  await page.locator('#login-submit').click();
  await page.locator('#login-error', { hasText: 'wrong name or password' }).waitFor();
  step('a wrong password is refused');
  await signIn(page, USERS.approver);
  await page.locator('#live-status', { hasText: 'live' }).waitFor();
  step('signed in; the events page follows the stream');

  // A request appears live, without a reload.
  await page.evaluate(() => { window.notReloaded = true; });
  const get = await run(JSON.parse(env('AGENT_GET')));
  if (get.code !== 0) fail(`the agent's GET failed: ${get.stderr}`);
  const liveRow = page.locator(`tr.event[data-kind="request"]`, { hasText: AGENT }).first();
  await liveRow.waitFor();
  if (!(await page.evaluate(() => window.notReloaded === true))) fail('the page reloaded');
  step('the request appeared live');
  await shot(page, 'events');

  // Filters: by agent and kind; free text that matches nothing.
  await page.locator('#filter-agent').fill(AGENT);
  await page.locator('#filter-kind').selectOption('request');
  await page.locator('#filter-apply').click();
  await page.waitForURL(/agent=/);
  await page.locator('tr.event').first().waitFor();
  const kinds = await page.locator('tr.event').evaluateAll((rows) => rows.map((r) => r.dataset.kind));
  if (!kinds.length || kinds.some((k) => k !== 'request')) fail(`filtered rows: ${kinds}`);
  await page.locator('#filter-q').fill('no-such-text-anywhere');
  await page.locator('#filter-apply').click();
  await page.locator('#no-events').waitFor();
  step(`filters: ${kinds.length} request row(s) of ${AGENT}, none for unmatched text`);

  // An event's detail, with its place in the chain.
  await page.goto(`${URL}#/events?agent=${AGENT}&kind=request`);
  await page.locator('tr.event').first().click();
  await page.locator('#detail-chain', { hasText: 'matches its hash' }).waitFor();
  const identity = await page.locator('#detail-identity').innerText();
  if (!identity.includes(AGENT) || !identity.includes('curl')) fail(`identity: ${identity}`);
  step('the detail shows the identity and the chain link');
  await shot(page, 'event');

  // The chain, verified now.
  await page.locator('nav a[data-view="chain"]').click();
  await page.locator('#verify-now').click();
  await page.locator('#chain-verification .badge', { hasText: 'intact' }).waitFor();
  step('the chain verifies intact');
  await shot(page, 'chain');

  // A held call, approved here: the agent's request then completes.
  const held = run(JSON.parse(env('AGENT_HELD')));
  await page.locator('nav a[data-view="approvals"]').click();
  const card = page.locator('.approval').first();
  await card.waitFor();
  const cardText = await card.innerText();
  if (!cardText.includes(AGENT) || !cardText.includes('POST')) fail(`approval card: ${cardText}`);
  const heldCount = () => page.locator('#held-count').innerText();
  if ((await heldCount()) !== '1') fail(`the nav counts ${await heldCount()} held`);
  await shot(page, 'approvals');
  await card.locator('button', { hasText: 'Approve' }).click();
  const approved = await held;
  if (approved.code !== 0 || !approved.stdout.includes('approved-body')) {
    fail(`the held request did not complete after approval: ${approved.code} ${approved.stdout} ${approved.stderr}`);
  }
  await page.locator('#no-approvals').waitFor();
  // The nav's count follows at once, not at its next poll.
  if ((await heldCount()) !== '') fail(`the nav still counts ${await heldCount()} held`);
  step('a held call was approved and reached the upstream');

  // The agents page; the agent revoked from here.
  await page.locator('nav a[data-view="agents"]').click();
  const agentCard = page.locator(`.agent[data-agent="${AGENT}"]`);
  await agentCard.waitFor();
  await shot(page, 'agents');
  await page.locator(`#revoke-reason-${AGENT}`).fill('revoked from the web view');
  await page.locator(`#revoke-${AGENT}`).click();
  await agentCard.locator('.badge', { hasText: 'revoked' }).waitFor();
  const after = await run(JSON.parse(env('AGENT_AFTER')));
  if (after.code === 0) fail(`the revoked agent still got through: ${after.stdout}`);
  step('the agent was revoked; its next request failed');
  await shot(page, 'agents-revoked');

  // The record of it all, live on the events page.
  await page.goto(`${URL}#/events`);
  await page.locator('tr.event[data-kind="revocation"]').first().waitFor();
  await shot(page, 'events-after');

  // An auditor reads, and cannot act.
  await page.locator('#logout').click();
  await page.locator('#login-name').waitFor();
  await signIn(page, USERS.auditor);
  await page.locator('nav a[data-view="agents"]').click();
  await page.locator(`.agent[data-agent="${AGENT}"]`).waitFor();
  if (await page.locator(`#restore-${AGENT}`).count()) fail('an auditor was offered Restore');
  step('an auditor sees the agents without the approver actions');

  // An intruder edits a stored event: the chain page names the first bad
  // sequence number once verified.
  const tamper = await run(JSON.parse(env('TAMPER')));
  if (tamper.code !== 0) fail(`tampering failed: ${tamper.stderr}`);
  await page.locator('nav a[data-view="chain"]').click();
  await page.locator('#verify-now').click();
  await page.locator('#chain-verification .badge', { hasText: 'broken' }).waitFor();
  const verification = await page.locator('#chain-verification').innerText();
  if (!verification.includes(`First bad sequence number\t${env('TAMPERED_SEQ')}`) && !verification.includes(`First bad sequence number\n${env('TAMPERED_SEQ')}`)) {
    fail(`chain page: ${verification}`);
  }
  step(`an edited event is found: the chain breaks at ${env('TAMPERED_SEQ')}`);
  await shot(page, 'chain-broken');
} catch (e) {
  console.error(`browser test failed: ${e.stack || e}`);
  await browser.close();
  process.exit(1);
}
await browser.close();
console.log('step: done');
