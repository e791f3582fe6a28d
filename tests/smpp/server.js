// An SMSC for the tests, built on the npm package `smpp` (its server and PDU codec, not ours).
//
//   node tests/smpp/server.js '{"system_id": "orderguard", "password": "secret"}'
//
// Prints one JSON line {"smpp": <port>, "control": <port>} once both listen. The control port
// speaks HTTP:
//   GET  /state   everything the SMSC saw: binds, submits (decoded text, data_coding, UDH),
//                 receipts sent and answered, sessions open
//   POST /config  {"throttle": n}        answer the next n submit_sm with ESME_RTHROTTLED
//                 {"drop_after": n}      after n more answered submits, cut every session and
//                                        leave the submits then in flight unanswered
//                 {"drop_now": true}     cut every session now
//                 {"refuse_bind": true}  answer binds with ESME_RBINDFAIL
//                 {"receipts": false}    stop sending delivery receipts
// Numbers ending in 99 are undeliverable: their receipt says stat:UNDELIV. A receipt whose
// deliver_sm was not answered before its session closed is sent again on the next session.
//
// Options beside system_id and password: "port" (default 0: any free one) and "forward": a URL
// each whole message (concatenated parts joined) is POSTed to as {"to", "text", "reference"},
// the load tool's SMS sink (bench/run.sh runs `verify` through the SMPP provider this way);
// with "forward" set the SMSC keeps no list of submits (a long run would fill its memory).
'use strict';
const http = require('http');
const smpp = require('smpp');

const options = JSON.parse(process.argv[2] || '{}');
const config = { throttle: 0, drop_after: null, refuse_bind: false, receipts: true };
const state = {
  binds: 0, bind_failures: 0, enquire_links: 0, unbinds: 0,
  submits: [], throttled: 0, dropped_sessions: 0,
  receipts_sent: 0, receipts_answered: 0,
};
const sessions = new Set();
const forwardAgent = new http.Agent({ keepAlive: true, maxSockets: 64 });
const partsWaiting = new Map();

// Posts a whole message to options.forward once its last part arrived.
function forward(submit) {
  let text = submit.text;
  if (submit.udh) {
    const key = `${submit.destination}/${submit.udh.reference}`;
    const parts = partsWaiting.get(key) || [];
    parts[submit.udh.part - 1] = submit.text;
    if (parts.filter((p) => p !== undefined).length < submit.udh.total) { partsWaiting.set(key, parts); return; }
    partsWaiting.delete(key);
    text = parts.join('');
  }
  const body = JSON.stringify({ to: `+${submit.destination}`, text, reference: submit.message_id });
  const request = http.request(options.forward, {
    method: 'POST', agent: forwardAgent,
    headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
  }, (response) => response.resume());
  request.on('error', () => {});
  request.end(body);
}
// Receipts whose session was cut wait for the next bind, as an SMSC keeps them for the account.
const pendingReceipts = [];
let nextId = 1;

function smscDate(date) {
  const p = (n) => String(n).padStart(2, '0');
  return p(date.getUTCFullYear() % 100) + p(date.getUTCMonth() + 1) + p(date.getUTCDate())
    + p(date.getUTCHours()) + p(date.getUTCMinutes());
}

function dropAll() {
  state.dropped_sessions += sessions.size;
  for (const session of sessions) session.destroy();
  sessions.clear();
}

function sendReceipt(session, submit) {
  if (!sessions.has(session)) {
    const next = sessions.values().next().value;
    if (!next) { pendingReceipts.push(submit); return; }
    session = next;
  }
  const delivered = !submit.destination.endsWith('99');
  const now = smscDate(new Date());
  const stat = delivered ? 'DELIVRD' : 'UNDELIV';
  const text = `id:${submit.message_id} sub:001 dlvrd:${delivered ? '001' : '000'} submit date:${now} done date:${now} stat:${stat} err:${delivered ? '000' : '001'} text:`;
  state.receipts_sent += 1;
  // Kept until answered: a receipt lost with its session is delivered again on the next one,
  // as an SMSC does with an unanswered deliver_sm.
  session.outstanding = session.outstanding || new Set();
  session.outstanding.add(submit);
  const target = session;
  session.deliver_sm({
    source_addr: submit.destination, source_addr_ton: 1, source_addr_npi: 1,
    destination_addr: submit.source, esm_class: smpp.ESM_CLASS.MC_DELIVERY_RECEIPT,
    short_message: text,
    receipted_message_id: submit.message_id,
    message_state: delivered ? smpp.MESSAGE_STATE.DELIVERED : smpp.MESSAGE_STATE.UNDELIVERABLE,
  }, (resp) => {
    target.outstanding.delete(submit);
    if (resp.command_status === 0) state.receipts_answered += 1;
  });
}

const server = smpp.createServer({ debug: false }, (session) => {
  session.on('error', () => {});
  session.on('close', () => {
    sessions.delete(session);
    for (const submit of session.outstanding || []) {
      state.receipts_redelivered = (state.receipts_redelivered || 0) + 1;
      sendReceipt(session, submit);
    }
    session.outstanding = new Set();
  });
  session.on('bind_transceiver', (pdu) => {
    session.pause();
    const wrong = pdu.system_id !== options.system_id || pdu.password !== options.password;
    if (config.refuse_bind || wrong) {
      state.bind_failures += 1;
      session.send(pdu.response({ command_status: wrong ? smpp.ESME_RINVPASWD : smpp.ESME_RBINDFAIL }));
      session.close();
      return;
    }
    state.binds += 1;
    sessions.add(session);
    session.send(pdu.response({ system_id: 'testsmsc' }));
    session.resume();
    for (const submit of pendingReceipts.splice(0)) sendReceipt(session, submit);
  });
  session.on('enquire_link', (pdu) => { state.enquire_links += 1; session.send(pdu.response()); });
  session.on('unbind', (pdu) => { state.unbinds += 1; session.send(pdu.response()); session.close(); });
  session.on('submit_sm', (pdu) => {
    if (config.throttle > 0) {
      config.throttle -= 1;
      state.throttled += 1;
      session.send(pdu.response({ command_status: smpp.ESME_RTHROTTLED }));
      return;
    }
    const message = pdu.short_message || {};
    const udh = (message.udh || []).find((h) => h[0] === 0x00 || h[0] === 0x08);
    const submit = {
      message_id: `msg-${nextId++}`,
      destination: pdu.destination_addr, destination_ton: pdu.dest_addr_ton, destination_npi: pdu.dest_addr_npi,
      source: pdu.source_addr, source_ton: pdu.source_addr_ton, source_npi: pdu.source_addr_npi,
      data_coding: pdu.data_coding, esm_class: pdu.esm_class, registered_delivery: pdu.registered_delivery,
      text: typeof message.message === 'string' ? message.message : String(message.message || ''),
      udh: udh ? (udh[0] === 0x00
        ? { reference: udh[2], total: udh[3], part: udh[4] }
        : { reference: udh.readUInt16BE(2), total: udh[4], part: udh[5] }) : null,
      answered: false,
    };
    if (options.forward) state.submits_forwarded = (state.submits_forwarded || 0) + 1;
    else state.submits.push(submit);
    // A submit read from a session just cut is never answered (its socket is gone).
    if (!sessions.has(session)) return;
    if (config.drop_after !== null) {
      if (config.drop_after === 0) { config.drop_after = null; dropAll(); return; }
      config.drop_after -= 1;
    }
    submit.answered = true;
    session.send(pdu.response({ message_id: submit.message_id }));
    if (options.forward) forward(submit);
    if (config.receipts && (pdu.registered_delivery & 0x03)) {
      setTimeout(() => sendReceipt(session, submit), 20);
    }
  });
});

const control = http.createServer((request, response) => {
  let body = '';
  request.on('data', (chunk) => { body += chunk; });
  request.on('end', () => {
    if (request.method === 'POST' && request.url === '/config') {
      const change = JSON.parse(body || '{}');
      if (change.drop_now) { delete change.drop_now; dropAll(); }
      Object.assign(config, change);
    } else if (request.url !== '/state') {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { 'content-type': 'application/json' });
    response.end(JSON.stringify({ ...state, sessions: sessions.size, config }));
  });
});

server.listen(options.port || 0, '127.0.0.1', () => {
  control.listen(0, '127.0.0.1', () => {
    process.stdout.write(JSON.stringify({ smpp: server.address().port, control: control.address().port }) + '\n');
  });
});
// The test that started it owns its stdin: when the test ends, the SMSC ends. A script that
// kills it itself passes "detached": true.
if (!options.detached) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}
