// netpost web UI: one page over the web API (/api/v1). No framework, no build step.
// Safety rule of this file: text that comes from mail, headers, file names or the server is
// only ever set with textContent (via h()), never as HTML. A message's HTML is shown only as
// the API's sanitised page inside a sandboxed <iframe>.
"use strict";

const API = "/api/v1";
const state = {
  me: null, csrf: null, mailboxes: [], mailbox: null, pages: [], threaded: false,
  search: "", listSeq: 0, events: null, trace: null, selected: null, listTimer: null,
};

// ---- small helpers --------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === "text") el.textContent = v;
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function cookie(name) {
  for (const part of document.cookie.split("; ")) {
    const [k, v] = part.split("=");
    if (k === name) return decodeURIComponent(v || "");
  }
  return null;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body, raw) {
  const headers = {};
  const init = { method, headers, credentials: "same-origin" };
  if (method !== "GET" && method !== "HEAD") {
    headers["X-CSRF-Token"] = state.csrf || cookie("netpost_csrf") || "";
  }
  if (raw !== undefined) {
    init.body = raw;
    headers["Content-Type"] = "application/octet-stream";
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  const res = await fetch(API + path, init);
  const type = res.headers.get("content-type") || "";
  const data = type.startsWith("application/json") ? await res.json() : null;
  if (!res.ok) {
    if (res.status === 401 && path !== "/login") { showLogin(); }
    throw new ApiError(res.status, (data && data.error) || `${res.status} ${res.statusText}`);
  }
  return data;
}

let statusTimer = null;
function say(message, error) {
  const el = document.getElementById("status");
  el.textContent = message;
  el.className = error ? "status error" : "status";
  el.hidden = false;
  clearTimeout(statusTimer);
  statusTimer = setTimeout(() => { el.hidden = true; }, error ? 8000 : 4000);
}

function fail(err) { say(err && err.message ? err.message : String(err), true); }

function when(seconds) {
  if (!seconds) return "";
  const d = new Date(seconds * 1000);
  const now = new Date();
  return d.toDateString() === now.toDateString()
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleDateString([], { year: "numeric", month: "short", day: "numeric" });
}

function octets(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}

function mount(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
}

function route() { return location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent); }
function go(path) { if (location.hash === "#/" + path) render(); else location.hash = "#/" + path; }

async function toBase64(blob) {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

// ---- login and the frame --------------------------------------------------------------------

function showLogin() {
  state.me = null;
  closeStreams();
  document.getElementById("top").hidden = true;
  const address = h("input", { id: "login-address", name: "address", type: "email",
    autocomplete: "username", required: true });
  const password = h("input", { id: "login-password", name: "password", type: "password",
    autocomplete: "current-password", required: true });
  const error = h("p", { class: "status error", role: "alert", hidden: true });
  const form = h("form", { class: "card login", on: { submit: async (ev) => {
    ev.preventDefault();
    try {
      const me = await api("POST", "/login", { address: address.value, password: password.value });
      await started(me);
    } catch (err) { error.textContent = err.message; error.hidden = false; }
  } } },
    h("h1", { text: "Log in to netpost" }),
    h("label", { for: "login-address", text: "Address" }), address,
    h("label", { for: "login-password", text: "Password" }), password,
    error,
    h("button", { type: "submit", class: "primary", text: "Log in" }));
  mount(form);
  address.focus();
}

async function started(me) {
  state.me = me;
  state.csrf = me.csrf_token || cookie("netpost_csrf");
  document.getElementById("top").hidden = false;
  document.getElementById("who").textContent = me.address + (me.admin ? " (admin)" : "");
  const nav = document.getElementById("nav");
  const links = [["mail", "Mail"], ["files", "Files"]];
  if (me.admin) links.push(["inspector", "Inspector"], ["admin", "Admin"]);
  links.push(["account", "Account"]);
  nav.replaceChildren(...links.map(([path, label]) =>
    h("a", { href: "#/" + path, "data-section": path, text: label })));
  openEvents();
  if (!location.hash || location.hash === "#/" || location.hash === "#") go("mail");
  else render();
}

function closeStreams() {
  if (state.events) { state.events.close(); state.events = null; }
  closeTrace();
}

function closeTrace() {
  if (state.trace) { state.trace.close(); state.trace = null; }
}

async function render() {
  if (!state.me) return;
  const [section] = route();
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.section === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (section !== "inspector") closeTrace();
  try {
    if (section === "mail") await mailView();
    else if (section === "compose") await composeView();
    else if (section === "files") await filesView();
    else if (section === "account") await accountView();
    else if (section === "inspector" && state.me.admin) await inspectorView();
    else if (section === "admin" && state.me.admin) await adminView();
    else go("mail");
  } catch (err) { fail(err); }
}

// ---- webmail --------------------------------------------------------------------------------

function openEvents() {
  if (state.events) return;
  const source = new EventSource(API + "/events");
  source.addEventListener("change", (ev) => {
    let change;
    try { change = JSON.parse(ev.data); } catch { return; }
    liveChange(change);
  });
  state.events = source;
}

function liveChange(change) {
  clearTimeout(state.listTimer);
  state.listTimer = setTimeout(async () => {
    if (route()[0] !== "mail") return;
    try {
      await loadMailboxes();
      drawFolders();
      const current = state.mailbox;
      if (current && change.mailbox_id === current.id && state.pages.length <= 1 && !state.search) {
        await loadList();
      }
    } catch (err) { fail(err); }
  }, 120);
}

async function loadMailboxes() {
  state.mailboxes = (await api("GET", "/mailboxes")).mailboxes;
}

function mailboxById(id) { return state.mailboxes.find((m) => m.id === id) || null; }

async function mailView() {
  const [, boxId, uid] = route();
  await loadMailboxes();
  const inbox = state.mailboxes.find((m) => m.name === "INBOX") || state.mailboxes[0];
  const wanted = boxId ? mailboxById(Number(boxId)) : inbox;
  if (!wanted) { mount(h("p", { text: "You have no mailboxes." })); return; }
  const changed = !state.mailbox || state.mailbox.id !== wanted.id;
  state.mailbox = wanted;
  if (changed || !document.getElementById("msglist")) {
    state.pages = [];
    state.search = "";
    mount(h("div", { class: "mail" },
      h("section", { class: "folders", "aria-label": "Folders", id: "folders" }),
      h("section", { class: "msglist", "aria-label": "Messages", id: "msglist" },
        listToolbar(), h("div", { id: "listbody" })),
      h("section", { class: "reader", "aria-label": "Message", id: "reader" },
        h("p", { class: "muted", text: "Choose a message to read it." }))));
    drawFolders();
    await loadList();
  } else {
    drawFolders();
  }
  if (uid) await readMessage(Number(uid));
}

function drawFolders() {
  const el = document.getElementById("folders");
  if (!el) return;
  el.replaceChildren(
    h("div", { class: "toolbar", style: null },
      h("a", { class: "button primary", href: "#/compose", text: "Compose" })),
    h("ul", {}, state.mailboxes.map((m) => h("li", {},
      h("a", { href: `#/mail/${m.id}`, "aria-current": state.mailbox && m.id === state.mailbox.id
        ? "true" : null, "data-mailbox": m.name },
        h("span", { text: m.name }),
        m.unseen ? h("span", { class: "count", "aria-label": `${m.unseen} unread`,
          text: String(m.unseen) }) : null)))));
}

function listToolbar() {
  const search = h("input", { type: "search", id: "search", placeholder: "Search subject, from, to",
    "aria-label": "Search messages", value: state.search });
  return h("form", { class: "toolbar", role: "search", on: { submit: (ev) => {
    ev.preventDefault(); state.search = search.value.trim(); state.pages = []; loadList().catch(fail);
  } } }, search, h("button", { type: "submit", text: "Search" }),
    h("label", { class: "muted", style: null },
      h("input", { type: "checkbox", id: "threaded", checked: state.threaded, on: { change: (ev) => {
        state.threaded = ev.target.checked; state.pages = []; loadList().catch(fail);
      } } }), " Threads"));
}

async function loadList() {
  const el = document.getElementById("listbody");
  if (!el) return;
  const box = state.mailbox;
  const before = state.pages.length ? state.pages[state.pages.length - 1] : null;
  const q = before ? `?before=${before}&limit=50` : "?limit=50";
  const seq = state.listSeq = (state.listSeq || 0) + 1;  // only the latest request draws
  let page;
  if (state.search) {
    page = await api("GET", `/mailboxes/${box.id}/search?q=${encodeURIComponent(state.search)}`);
  } else if (state.threaded) {
    page = await api("GET", `/mailboxes/${box.id}/threads${q}`);
  } else {
    page = await api("GET", `/mailboxes/${box.id}/messages${q}`);
  }
  if (seq !== state.listSeq) return;
  const list = h("ul", { role: "listbox", "aria-label": `${box.name} messages`, id: "messages" });
  if (page.threads) {
    for (const t of page.threads) {
      const items = t.messages.slice().reverse();
      const li = h("li", { class: "thread", role: "group",
        "aria-label": `Conversation: ${t.subject || "(no subject)"}` });
      items.forEach((m, i) => li.append(messageRow(m, i === 0 ? t.messages.length : 0)));
      list.append(li);
    }
  } else {
    for (const m of page.messages) list.append(messageRow(m, 0));
  }
  if (!list.children.length) list.append(h("li", { class: "muted pager", text: "No messages." }));
  const pager = h("div", { class: "pager" },
    h("button", { type: "button", text: "Newer", disabled: !state.pages.length || !!state.search,
      on: { click: () => { state.pages.pop(); loadList().catch(fail); } } }),
    h("span", { text: state.search ? `${page.total} found`
      : `${box.name}: ${page.total} messages` + (state.pages.length ? `, page ${state.pages.length + 1}` : "") }),
    h("button", { type: "button", text: "Older", disabled: !page.next_before || !!state.search,
      on: { click: () => { state.pages.push(page.next_before); loadList().catch(fail); } } }));
  el.replaceChildren(list, pager);
}

// "Name" <a@b> / Name <a@b> / a@b -> the name, else the address (shown as text, never HTML).
function displayName(from) {
  const m = /^\s*(?:"((?:[^"\\]|\\.)*)"|([^<]*?))\s*<([^<>]*)>\s*$/.exec(from || "");
  if (!m) return from || "";
  const name = m[1] !== undefined ? m[1].replace(/\\(.)/g, "$1") : m[2];
  return name || m[3];
}

function messageRow(m, threadCount) {
  const unread = !m.flags.includes("\\Seen");
  const flagged = m.flags.includes("\\Flagged");
  const from = displayName(m.from) || "(no sender)";
  return h("li", {
    class: "row" + (unread ? " unread" : ""), role: "option", tabindex: "0", "data-uid": m.uid,
    "aria-selected": state.selected === m.uid ? "true" : "false",
    "aria-label": `${unread ? "Unread. " : ""}${flagged ? "Flagged. " : ""}From ${from}: ${m.subject}`,
    on: {
      click: () => go(`mail/${state.mailbox.id}/${m.uid}`),
      keydown: (ev) => {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); go(`mail/${state.mailbox.id}/${m.uid}`); }
        if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {  // move through the list
          ev.preventDefault();
          const rows = [...document.querySelectorAll("#messages li.row")];
          const next = rows[rows.indexOf(ev.currentTarget) + (ev.key === "ArrowDown" ? 1 : -1)];
          if (next) next.focus();
        }
      },
    } },
    h("span", { class: "flag", "aria-hidden": "true", text: flagged ? "★" : "" }),
    h("span", { class: "from", text: from }, threadCount > 1
      ? h("span", { class: "tcount", text: `(${threadCount})` }) : null),
    h("span", { class: "date", text: when(m.internaldate) }),
    h("span", { class: "subject", text: m.subject || "(no subject)" }));
}

function markRow(uid, seen) {
  const row = document.querySelector(`#messages li[data-uid="${uid}"]`);
  if (!row) return;
  for (const r of document.querySelectorAll("#messages li.row")) r.setAttribute("aria-selected", "false");
  row.setAttribute("aria-selected", "true");
  if (seen) row.classList.remove("unread");
}

async function readMessage(uid) {
  const box = state.mailbox;
  const reader = document.getElementById("reader");
  const m = await api("GET", `/mailboxes/${box.id}/messages/${uid}`);
  state.selected = uid;
  if (!m.flags.includes("\\Seen")) {
    await api("POST", `/mailboxes/${box.id}/messages/${uid}/flags`, { add: ["\\Seen"] });
    m.flags.push("\\Seen");
  }
  markRow(uid, true);
  const header = (name) => {
    const f = m.headers.find(([k]) => k.toLowerCase() === name);
    return f ? f[1] : "";
  };
  const flagged = m.flags.includes("\\Flagged");
  const moveTo = h("select", { "aria-label": "Move to mailbox", id: "move-to" },
    h("option", { value: "", text: "Move to…" }),
    state.mailboxes.filter((x) => x.id !== box.id).map((x) => h("option", { value: x.name, text: x.name })));
  moveTo.addEventListener("change", async () => {
    if (!moveTo.value) return;
    try {
      await api("POST", `/mailboxes/${box.id}/messages/${uid}/move`, { mailbox: moveTo.value });
      say(`Moved to ${moveTo.value}`);
      go(`mail/${box.id}`);
      await loadList();
    } catch (err) { fail(err); }
  });
  const isDraft = box.special_use === "\\Drafts" || box.name === "Drafts";
  const actions = h("div", { class: "toolbar" },
    isDraft ? h("button", { type: "button", class: "primary", text: "Edit draft",
      on: { click: () => go(`compose/draft/${box.id}/${uid}`) } }) : null,
    h("button", { type: "button", text: "Reply", on: { click: () => go(`compose/reply/${box.id}/${uid}`) } }),
    h("button", { type: "button", text: "Forward", on: { click: () => go(`compose/forward/${box.id}/${uid}`) } }),
    h("button", { type: "button", text: flagged ? "Unflag" : "Flag", "aria-pressed": flagged ? "true" : "false",
      on: { click: async () => {
        await api("POST", `/mailboxes/${box.id}/messages/${uid}/flags`,
          flagged ? { remove: ["\\Flagged"] } : { add: ["\\Flagged"] }).catch(fail);
        await readMessage(uid); await loadList();
      } } }),
    h("button", { type: "button", text: "Mark unread", on: { click: async () => {
      await api("POST", `/mailboxes/${box.id}/messages/${uid}/flags`, { remove: ["\\Seen"] }).catch(fail);
      await loadList();
    } } }),
    moveTo,
    h("button", { type: "button", class: "danger", text: "Delete", on: { click: async () => {
      try {
        const r = await api("DELETE", `/mailboxes/${box.id}/messages/${uid}?trash=true`);
        say(r.detail === "deleted" ? "Deleted" : "Moved to Trash");
        go(`mail/${box.id}`);
        await loadList();
      } catch (err) { fail(err); }
    } } }),
    h("a", { class: "button", href: `${API}/mailboxes/${box.id}/messages/${uid}/raw`, download: "",
      text: "Source" }));
  const dl = h("dl", { class: "headers" });
  for (const [label, value] of [["From", m.from], ["To", m.to], ["Cc", m.cc], ["Date", m.date]]) {
    if (value) dl.append(h("dt", { text: label }), h("dd", { text: value }));
  }
  const parts = m.parts;
  const html = parts.find((p) => p.content_type === "text/html" && p.disposition !== "attachment");
  const text = parts.find((p) => p.content_type === "text/plain" && p.disposition !== "attachment");
  const files = parts.filter((p) => p.filename || p.disposition === "attachment");
  const body = h("div", { id: "message-body" });
  if (html) {
    await showHtml(body, box.id, uid, false);
  } else if (text) {
    body.append(h("pre", { class: "body", text: text.text || "" }));
  } else {
    body.append(h("p", { class: "muted", text: "This message has no text to show." }));
  }
  const attachments = files.length ? h("section", { "aria-label": "Attachments" },
    h("h2", { text: "Attachments" }),
    h("ul", { class: "attachments" }, files.map((p) => h("li", {},
      h("a", { class: "button", download: p.filename || "", href:
        `${API}/mailboxes/${box.id}/messages/${uid}/parts/${encodeURIComponent(p.part)}`,
        text: `${p.filename || "part " + p.part} (${octets(p.size)})` }))))) : null;
  reader.replaceChildren(...[actions, h("h1", { id: "message-subject", text: m.subject || "(no subject)" }),
    dl, body, attachments].filter(Boolean));
  reader.dataset.messageId = header("message-id");
}

async function showHtml(container, boxId, uid, remote) {
  const url = `${API}/mailboxes/${boxId}/messages/${uid}/html${remote ? "?remote=true" : ""}`;
  const res = await fetch(url, { credentials: "same-origin" });
  const blocked = Number(res.headers.get("x-netpost-remote-blocked") || "0");
  const frame = h("iframe", { title: "Message body", src: url, id: "html-body",
    sandbox: "allow-popups allow-popups-to-escape-sandbox", referrerpolicy: "no-referrer" });
  const items = [];
  if (blocked > 0 && !remote) {
    items.push(h("div", { class: "notice", role: "note", id: "remote-notice" },
      h("span", { text: `Remote content blocked (${blocked}): it could tell the sender you read this.` }),
      h("button", { type: "button", text: "Show remote content", on: { click: () => {
        showHtml(container, boxId, uid, true).catch(fail);
      } } })));
  }
  items.push(frame);
  container.replaceChildren(...items);
}

// ---- compose --------------------------------------------------------------------------------

function splitAddresses(text) {
  return text.split(/[,;]/).map((s) => s.trim()).filter(Boolean);
}

function quote(text) {
  const body = (text || "").replace(/\n+$/, "");
  return body ? body.split("\n").map((l) => (l ? "> " + l : ">")).join("\n") + "\n" : "";
}

async function composeView() {
  const [, mode, boxId, uid] = route();
  if (!state.mailboxes.length) await loadMailboxes();
  let original = null;
  if (mode && boxId && uid) original = await api("GET", `/mailboxes/${boxId}/messages/${uid}`);
  const header = (name) => {
    if (!original) return "";
    const f = original.headers.find(([k]) => k.toLowerCase() === name);
    return f ? f[1] : "";
  };
  const origText = original ? (original.parts.find((p) => p.content_type === "text/plain") || {}).text || "" : "";
  const draft = mode === "draft" && original;
  // A draft in Drafts: what will replace it when saved again, deleted once it is sent.
  let draftUid = draft ? Number(uid) : null;
  const draftBox = draft ? Number(boxId) : null;
  const forwarded = (mode === "forward" || draft) && original
    ? original.parts.filter((p) => p.filename || p.disposition === "attachment") : [];
  const to = h("input", { type: "text", id: "compose-to", value: mode === "reply"
    ? (header("reply-to") || original.from) : draft ? original.to : "" });
  const cc = h("input", { type: "text", id: "compose-cc", value: draft ? original.cc : "" });
  const subjectPrefix = mode === "reply" ? "Re: " : mode === "forward" ? "Fwd: " : "";
  const origSubject = original ? original.subject.replace(/^\s*(re|fwd?)\s*:\s*/i, "") : "";
  const subject = h("input", { type: "text", id: "compose-subject",
    value: draft ? original.subject : original ? subjectPrefix + origSubject : "" });
  let bodyText = draft ? origText : "";
  if (mode === "reply" && original) bodyText = `\n\nOn ${original.date}, ${original.from} wrote:\n${quote(origText)}`;
  if (mode === "forward" && original) {
    bodyText = `\n\n---------- Forwarded message ----------\nFrom: ${original.from}\nDate: ${original.date}\n` +
      `Subject: ${original.subject}\nTo: ${original.to}\n\n${origText}`;
  }
  const body = h("textarea", { id: "compose-body" });
  body.value = bodyText;
  const files = h("input", { type: "file", id: "compose-files", multiple: true });
  const sendButton = h("button", { type: "submit", class: "primary", text: "Send" });
  // The original's attachments, fetched now: a draft saved again replaces (deletes) the one
  // they came from.
  const carried = [];
  for (const p of forwarded) {
    const res = await fetch(`${API}/mailboxes/${boxId}/messages/${uid}/parts/${encodeURIComponent(p.part)}`,
      { credentials: "same-origin" });
    if (!res.ok) throw new Error(`cannot fetch ${p.filename}`);
    carried.push({ filename: p.filename || `part-${p.part}`, content_type: p.content_type,
      content_base64: await toBase64(await res.blob()) });
  }
  const inReplyTo = mode === "reply" ? header("message-id") : draft ? header("in-reply-to") : "";
  async function gather() {
    const attachments = [...carried];
    for (const f of files.files) {
      attachments.push({ filename: f.name, content_type: f.type || "application/octet-stream",
        content_base64: await toBase64(f) });
    }
    return attachments;
  }
  const saveButton = h("button", { type: "button", text: "Save draft", id: "save-draft", on: { click: async () => {
    saveButton.disabled = true;
    try {
      const request = { to: splitAddresses(to.value), cc: splitAddresses(cc.value),
        subject: subject.value, text: body.value, attachments: await gather() };
      if (inReplyTo) request.in_reply_to = inReplyTo;
      if (draftUid) request.replaces = draftUid;
      const r = await api("POST", "/drafts", request);
      draftUid = r.uid;
      say("Draft saved in Drafts");
    } catch (err) { fail(err); }
    saveButton.disabled = false;
  } } });
  const form = h("form", { class: "card compose", on: { submit: async (ev) => {
    ev.preventDefault();
    sendButton.disabled = true;
    try {
      const attachments = await gather();
      const request = { to: splitAddresses(to.value), cc: splitAddresses(cc.value),
        subject: subject.value, text: body.value, attachments };
      if (inReplyTo) request.in_reply_to = inReplyTo;
      const r = await api("POST", "/send", request);
      say(`Sent to ${r.recipients.join(", ")} (queue id ${r.queue_id})`);
      if (mode === "reply" && original) {
        await api("POST", `/mailboxes/${boxId}/messages/${uid}/flags`, { add: ["\\Answered"] }).catch(() => {});
      }
      if (draftUid) {  // sent: the draft has done its work
        const drafts = draftBox || (state.mailboxes.find((m) => m.name === "Drafts") || {}).id;
        if (drafts) await api("DELETE", `/mailboxes/${drafts}/messages/${draftUid}`).catch(() => {});
      }
      go(boxId && mode !== "draft" ? `mail/${boxId}` : "mail");
    } catch (err) { fail(err); sendButton.disabled = false; }
  } } },
    h("h1", { text: mode === "reply" ? "Reply" : mode === "forward" ? "Forward"
      : draft ? "Draft" : "New message" }),
    h("label", { for: "compose-to", text: "To (commas between addresses)" }), to,
    h("label", { for: "compose-cc", text: "Cc" }), cc,
    h("label", { for: "compose-subject", text: "Subject" }), subject,
    h("label", { for: "compose-body", text: "Message" }), body,
    forwarded.length ? h("p", { class: "muted", text: (draft ? "Attached: " : "Forwarding attachments: ") +
      forwarded.map((p) => p.filename || p.part).join(", ") }) : null,
    h("label", { for: "compose-files", text: "Attach files" }), files,
    h("div", { class: "toolbar", style: null }, sendButton, saveButton,
      h("a", { class: "button", href: boxId ? `#/mail/${boxId}` : "#/mail", text: "Cancel" })));
  mount(form);
  (mode === "reply" ? body : to).focus();
  if (mode === "reply") body.setSelectionRange(0, 0);
}

// ---- files ----------------------------------------------------------------------------------

async function filesView() {
  const path = "/" + route().slice(1).filter(Boolean).join("/");
  const [listing, shares] = await Promise.all([
    api("GET", `/files?path=${encodeURIComponent(path)}`), api("GET", "/shares")]);
  const shared = new Map(shares.shares.filter((s) => s.address === state.me.address)
    .map((s) => [s.path, s]));
  const crumbs = h("nav", { class: "crumbs", "aria-label": "Folder" }, h("a", { href: "#/files", text: "Home" }));
  let acc = "";
  for (const seg of listing.path.split("/").filter(Boolean)) {
    acc += "/" + seg;
    crumbs.append(" / ", h("a", { href: "#/files" + acc.split("/").map(encodeURIComponent).join("/"), text: seg }));
  }
  const link = (p) => "#/files" + p.split("/").map(encodeURIComponent).join("/");
  const rows = listing.entries.map((e) => {
    const share = shared.get(e.path);
    return h("tr", { "data-path": e.path },
      h("td", {}, e.is_dir ? h("a", { href: link(e.path), text: e.name + "/" }) : e.name),
      h("td", { text: e.is_dir ? "" : octets(e.size) }),
      h("td", { text: when(e.mtime) }),
      h("td", {}, share ? h("a", { href: share.url, class: "mono", text: share.url, target: "_blank",
        rel: "noopener" }) : h("span", { class: "muted", text: "not shared" })),
      h("td", { class: "toolbar" },
        e.is_dir ? null : h("a", { class: "button", download: e.name,
          href: `${API}/files/content?path=${encodeURIComponent(e.path)}`, text: "Download" }),
        share
          ? h("button", { type: "button", text: "Unshare", on: { click: async () => {
            try { await api("DELETE", `/shares/${encodeURIComponent(share.token)}`); say(`Stopped sharing ${e.name}`); render(); } catch (err) { fail(err); }
          } } })
          : h("button", { type: "button", text: "Share", on: { click: async () => {
            try { const s = await api("POST", "/shares", { path: e.path }); say(`Shared at ${s.url}`); render(); } catch (err) { fail(err); }
          } } }),
        h("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete ${e.name}`,
          on: { click: async () => {
            if (!confirm(`Delete ${e.name}?`)) return;
            try { await api("DELETE", `/files?path=${encodeURIComponent(e.path)}`); say(`Deleted ${e.name}`); render(); } catch (err) { fail(err); }
          } } })));
  });
  const upload = h("input", { type: "file", id: "upload-file", multiple: true });
  const folder = h("input", { type: "text", id: "folder-name", placeholder: "new folder" });
  const base = listing.path === "/" ? "" : listing.path;
  mount(h("div", { class: "files" },
    h("h1", { text: "Files" }),
    crumbs,
    h("form", { class: "inline", on: { submit: async (ev) => {
      ev.preventDefault();
      try {
        for (const f of upload.files) {
          await api("PUT", `/files/content?path=${encodeURIComponent(base + "/" + f.name)}`, undefined, f);
        }
        say(`Uploaded ${upload.files.length} file(s)`);
        render();
      } catch (err) { fail(err); }
    } } }, h("div", {}, h("label", { for: "upload-file", text: "Files to upload" }), upload),
      h("button", { type: "submit", class: "primary", text: "Upload" })),
    h("form", { class: "inline", on: { submit: async (ev) => {
      ev.preventDefault();
      try { await api("POST", "/files/folders", { path: base + "/" + folder.value }); render(); } catch (err) { fail(err); }
    } } }, h("div", {}, h("label", { for: "folder-name", text: "Folder" }), folder),
      h("button", { type: "submit", text: "Make folder" })),
    h("table", {}, h("thead", {}, h("tr", {}, ["Name", "Size", "Modified", "Shared at", ""].map((t) => h("th", { text: t })))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: "5", class: "muted", text: "This folder is empty." })))),
    h("p", { class: "muted", text: `Using ${octets(listing.usage)}` + (listing.quota ? ` of ${octets(listing.quota)}` : "") })));
}

// ---- inspector ------------------------------------------------------------------------------

async function inspectorView() {
  const [, kind, name] = route();
  const [live, traces] = await Promise.all([api("GET", "/sessions"), api("GET", "/traces")]);
  const choose = h("select", { id: "trace-listener", "aria-label": "Listener" },
    h("option", { value: "", text: "All traced listeners" }),
    live.listeners.map((l) => h("option", { value: l.name, selected: kind === "listener" && l.name === name,
      text: `${l.name} (${l.protocol}, ${l.address})${l.traced ? "" : " — not traced"}` })));
  const lines = h("ol", { class: "lines", id: "trace-lines", "aria-live": "off", "aria-label": "Conversation" });
  let paused = false;
  const pause = h("button", { type: "button", text: "Pause", "aria-pressed": "false", on: { click: () => {
    paused = !paused; pause.textContent = paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(paused));
  } } });
  const watching = h("span", { id: "trace-watching", class: "muted" });
  function watch(filter) {
    closeTrace();
    lines.replaceChildren();
    const q = filter.session ? `?session=${encodeURIComponent(filter.session)}`
      : filter.listener ? `?listener=${encodeURIComponent(filter.listener)}` : "";
    watching.textContent = filter.session ? `Watching session ${filter.session}`
      : filter.listener ? `Watching listener ${filter.listener}` : "Watching every traced listener";
    const source = new EventSource(`${API}/traces/stream${q}`);
    source.addEventListener("trace", (ev) => { if (!paused) addLine(ev.data); });
    source.addEventListener("open", () => lines.setAttribute("data-open", "true"));
    state.trace = source;
  }
  function addLine(text) {
    const [time, sid, peer, ...rest] = text.split(" ");
    const said = rest.join(" ");
    const cls = said.startsWith("C:") ? "c" : said.startsWith("S:") ? "s" : "x";
    lines.append(h("li", { class: cls },
      h("span", { class: "muted", text: (time || "").replace(/^.*T/, "").replace("Z", "") + " " }),
      h("button", { type: "button", class: "sid", title: "Watch only this session", text: sid,
        on: { click: () => go(`inspector/session/${sid}`) } }),
      ` ${peer} `, h("span", { text: said })));
    while (lines.children.length > 2000) lines.firstChild.remove();
    lines.scrollTop = lines.scrollHeight;
  }
  choose.addEventListener("change", () => go(choose.value ? `inspector/listener/${choose.value}` : "inspector"));
  const sessions = h("table", {}, h("thead", {}, h("tr", {}, ["Listener", "Peer", "TLS", "Idle"].map((t) => h("th", { text: t })))),
    h("tbody", {}, live.sessions.map((s) => h("tr", {}, h("td", { text: s.listener }), h("td", { class: "mono", text: s.peer }),
      h("td", { text: s.tls ? "yes" : "no" }), h("td", { text: `${Math.round(s.idle)} s` })))));
  const chosen = kind === "listener" ? live.listeners.find((l) => l.name === name) : null;
  const switchTrace = (on) => async () => {
    try {
      await api("PUT", `/traces/${encodeURIComponent(chosen.name)}`, { enabled: on });
      say(on ? `Tracing ${chosen.name}: new sessions from now on` : `Stopped tracing ${chosen.name}`);
      render();
    } catch (err) { fail(err); }
  };
  let control = null;
  if (chosen && !chosen.traced) {
    control = h("div", { class: "notice", role: "note" },
      h("span", { text: `${chosen.name} is not traced: its sessions are not recorded.` }),
      h("button", { type: "button", class: "primary", text: `Trace ${chosen.name}`, on: { click: switchTrace(true) } }));
  } else if (chosen) {
    control = h("div", { class: "toolbar" }, h("button", { type: "button", text: `Stop tracing ${chosen.name}`,
      on: { click: switchTrace(false) } }));
  } else if (!traces.enabled) {
    control = h("p", { class: "status error", text: "No listener is traced: pick one above and press " +
      "its Trace button, or start netpost with --trace ([trace] listeners in netpost.toml)." });
  }
  mount(h("div", { class: "inspector" },
    h("h1", { text: "Protocol inspector" }),
    control,
    h("div", { class: "toolbar" }, h("label", { for: "trace-listener", class: "muted", text: "Listener" }), choose,
      pause, h("button", { type: "button", text: "Clear", on: { click: () => lines.replaceChildren() } }),
      kind === "session" ? h("a", { class: "button", href: "#/inspector", text: "All sessions" }) : null,
      watching),
    lines,
    h("details", {}, h("summary", { text: `Open sessions (${live.sessions.length})` }), sessions)));
  if (traces.enabled) watch(kind === "session" ? { session: name } : kind === "listener" ? { listener: name } : {});
}

// ---- account --------------------------------------------------------------------------------

async function accountView() {
  const [account, { tokens }] = await Promise.all([
    api("GET", `/accounts/${encodeURIComponent(state.me.address)}`), api("GET", "/tokens")]);
  const current = h("input", { id: "current-password", type: "password", autocomplete: "current-password" });
  const fresh = h("input", { id: "new-password", type: "password", autocomplete: "new-password" });
  const tokenName = h("input", { id: "token-name", type: "text", placeholder: "scripts" });
  const created = h("div", { id: "token-created" });
  const usage = `${octets(account.usage || 0)} in ${account.messages || 0} messages` +
    (account.quota ? ` of ${octets(account.quota)}` : "");
  mount(h("div", {},
    h("h1", { text: "Your account" }),
    h("p", { class: "muted", text: `${account.address}: ${usage}.` }),
    h("h2", { text: "Password" }),
    h("form", { class: "inline", on: { submit: async (ev) => {
      ev.preventDefault();
      try {
        await api("PUT", `/accounts/${encodeURIComponent(state.me.address)}/password`,
          { password: fresh.value, current_password: current.value });
        current.value = ""; fresh.value = "";
        say("Password changed (for mail, files and this page alike)");
      } catch (err) { fail(err); }
    } } },
      h("div", {}, h("label", { for: "current-password", text: "Current password" }), current),
      h("div", {}, h("label", { for: "new-password", text: "New password" }), fresh),
      h("button", { type: "submit", class: "primary", text: "Change password" })),
    h("h2", { text: "API tokens" }),
    h("p", { class: "muted", text: "For programs: send 'Authorization: Bearer <token>' to /api/v1 (see /api/v1/docs)." }),
    h("form", { class: "inline", on: { submit: async (ev) => {
      ev.preventDefault();
      try {
        const t = await api("POST", "/tokens", { name: tokenName.value });
        await accountView();
        document.getElementById("token-created").replaceChildren(h("div", { class: "notice", role: "note" },
          h("span", { text: "Copy it now, it is not shown again: " }),
          h("code", { class: "mono", id: "new-token", text: t.token })));
      } catch (err) { fail(err); }
    } } },
      h("div", {}, h("label", { for: "token-name", text: "Name" }), tokenName),
      h("button", { type: "submit", text: "Make a token" })),
    created,
    table(["Name", "Id", "Made", "Expires", ""], tokens.map((t) => h("tr", { "data-token": t.id },
      h("td", { text: t.name || "(no name)" }), h("td", { class: "mono", text: t.id }),
      h("td", { text: when(t.created) }), h("td", { text: t.expires ? when(t.expires) : "never" }),
      h("td", {}, h("button", { type: "button", class: "danger", text: "Revoke", on: { click: async () => {
        try { await api("DELETE", `/tokens/${t.id}`); say("Token revoked"); await accountView(); } catch (err) { fail(err); }
      } } })))), "No tokens.")));
}

// ---- admin ----------------------------------------------------------------------------------

const ADMIN_PAGES = [["domains", "Domains"], ["users", "Users"], ["aliases", "Aliases"],
  ["queue", "Queue"], ["leases", "Leases"], ["server", "Certificates and settings"]];

function table(headings, rows, empty) {
  return h("table", {}, h("thead", {}, h("tr", {}, headings.map((t) => h("th", { text: t })))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: String(headings.length), class: "muted", text: empty }))));
}

function field(id, label, attrs) {
  const input = h("input", { id, name: id, type: "text", ...(attrs || {}) });
  return [h("div", {}, h("label", { for: id, text: label }), input), input];
}

async function adminView() {
  const page = route()[1] || "domains";
  const nav = h("nav", { class: "adminnav", "aria-label": "Administration" },
    ADMIN_PAGES.map(([p, label]) => h("a", { href: `#/admin/${p}`, "aria-current": p === page ? "page" : null, text: label })));
  const body = h("div", {});
  mount(h("h1", { text: "Administration" }), nav, body);
  const reload = () => render();
  const act = (fn, message) => async (ev) => {
    if (ev && ev.preventDefault) ev.preventDefault();
    try { await fn(); if (message) say(message); reload(); } catch (err) { fail(err); }
  };
  if (page === "domains") {
    const { domains } = await api("GET", "/domains");
    const [box, name] = field("domain-name", "Domain");
    const dkim = h("pre", { class: "json", id: "dkim", hidden: true });
    body.append(h("form", { class: "inline", on: { submit: act(() => api("POST", "/domains", { name: name.value }), "Domain added") } },
      box, h("button", { type: "submit", class: "primary", text: "Add domain" })),
      table(["Domain", ""], domains.map((d) => h("tr", {}, h("td", { text: d }), h("td", { class: "toolbar" },
        h("button", { type: "button", text: "DKIM record", on: { click: async () => {
          try { const r = await api("GET", `/domains/${encodeURIComponent(d)}/dkim`); dkim.textContent = r.zone; dkim.hidden = false; } catch (err) { fail(err); }
        } } }),
        h("button", { type: "button", class: "danger", text: "Remove", on: { click: act(async () => {
          if (!confirm(`Remove domain ${d}?`)) throw new Error("kept");
          await api("DELETE", `/domains/${encodeURIComponent(d)}`);
        }, `Removed ${d}`) } })))), "No domains."), dkim);
  } else if (page === "users") {
    const { accounts } = await api("GET", "/accounts");
    const [abox, address] = field("user-address", "Address", { type: "email" });
    const [pbox, password] = field("user-password", "Password", { type: "password", autocomplete: "new-password" });
    body.append(h("form", { class: "inline", on: { submit: act(() => api("POST", "/accounts",
      { address: address.value, password: password.value }), "User added") } },
      abox, pbox, h("button", { type: "submit", class: "primary", text: "Add user" })),
      table(["Address", "Role", ""], accounts.map((a) => h("tr", { "data-address": a.address },
        h("td", { text: a.address }), h("td", { text: a.admin ? "administrator" : "user" }),
        h("td", { class: "toolbar" },
          h("button", { type: "button", text: "Set password", on: { click: (ev) => {
            // An inline form (a password field, not a prompt that shows what is typed).
            const cell = ev.currentTarget.parentElement;
            const pw = h("input", { type: "password", autocomplete: "new-password",
              "aria-label": `New password for ${a.address}` });
            cell.replaceChildren(h("form", { class: "inline", on: { submit: act(() =>
              api("PUT", `/accounts/${encodeURIComponent(a.address)}/password`, { password: pw.value }),
              `Password of ${a.address} changed`) } },
              pw, h("button", { type: "submit", class: "primary", text: "Save password" }),
              h("button", { type: "button", text: "Cancel", on: { click: () => reload() } })));
            pw.focus();
          } } }),
          h("button", { type: "button", class: "danger", text: "Delete", on: { click: act(async () => {
            if (!confirm(`Delete ${a.address} and all its mail?`)) throw new Error("kept");
            await api("DELETE", `/accounts/${encodeURIComponent(a.address)}`);
          }, `Deleted ${a.address}`) } })))), "No users."));
  } else if (page === "aliases") {
    const { aliases } = await api("GET", "/aliases");
    const [sbox, source] = field("alias-source", "Alias (local@domain or @domain)");
    const [tbox, target] = field("alias-target", "Delivers to");
    body.append(h("form", { class: "inline", on: { submit: act(() => api("POST", "/aliases",
      { source: source.value, target: target.value }), "Alias added") } },
      sbox, tbox, h("button", { type: "submit", class: "primary", text: "Add alias" })),
      table(["Alias", "Delivers to", ""], aliases.map((a) => h("tr", {}, h("td", { text: a.source }), h("td", { text: a.target }),
        h("td", {}, h("button", { type: "button", class: "danger", text: "Remove", on: { click: act(() =>
          api("DELETE", `/aliases?source=${encodeURIComponent(a.source)}&target=${encodeURIComponent(a.target)}`), "Alias removed") } })))),
      "No aliases."));
  } else if (page === "queue") {
    const q = await api("GET", "/queue");
    const counts = Object.entries(q.counts).map(([k, v]) => `${k}: ${v}`).join(", ");
    body.append(h("div", { class: "toolbar" }, h("span", { class: "grow muted", text: counts || "The queue is empty." }),
      h("button", { type: "button", text: "Retry all now", on: { click: act(() => api("POST", "/queue/flush"), "Retrying") } })),
      table(["Queue id", "From", "Arrived", "Recipients", ""], q.messages.map((m) => h("tr", { "data-queue-id": m.queue_id },
        h("td", { class: "mono", text: m.queue_id }), h("td", { text: m.mail_from || "<>" }), h("td", { text: when(m.arrival) }),
        h("td", {}, h("ul", {}, m.recipients.map((r) => h("li", { text: `${r.address} — ${r.state}` +
          (r.attempts ? `, ${r.attempts} attempts` : "") + (r.last_error ? `: ${r.last_error}` : "") })))),
        h("td", { class: "toolbar" },
          h("button", { type: "button", text: "Retry", on: { click: act(() => api("POST", `/queue/${encodeURIComponent(m.queue_id)}/retry`), "Retrying") } }),
          h("button", { type: "button", class: "danger", text: "Delete", on: { click: act(async () => {
            if (!confirm(`Delete ${m.queue_id} from the queue?`)) throw new Error("kept");
            await api("DELETE", `/queue/${encodeURIComponent(m.queue_id)}`);
          }, "Deleted from the queue") } })))), "Nothing is waiting."));
  } else if (page === "leases") {
    const { leases } = await api("GET", "/leases");
    body.append(table(["Address", "State", "Hardware", "Host name", "Subnet", "Expires"], leases.map((l) => h("tr", {},
      h("td", { class: "mono", text: l.address }), h("td", { text: l.state }), h("td", { class: "mono", text: l.hardware }),
      h("td", { text: l.hostname }), h("td", { text: l.subnet }), h("td", { text: new Date(l.expires * 1000).toLocaleString() }))),
    "No leases (is the dhcp listener on?)."));
  } else if (page === "server") {
    const s = await api("GET", "/server");
    const c = s.certificate;
    const dl = h("dl", { class: "headers card" });
    const pairs = c ? [["File", c.file], ["Subject", c.subject], ["Issuer", c.issuer + (c.self_signed ? " (self-signed)" : "")],
      ["Valid from", c.not_before], ["Valid until", c.not_after], ["Names", c.dns_names.join(", ")], ["SHA-256", c.sha256]] : [];
    for (const [k, v] of pairs) dl.append(h("dt", { text: k }), h("dd", { class: k === "SHA-256" ? "mono" : null, text: v }));
    body.append(h("p", { class: "muted", text: `netpost ${s.version} on ${s.hostname}; data in ${s.data_dir || "(memory)"}. Read-only: change netpost.toml and restart.` }),
      h("h2", { text: "TLS certificate" }), c ? dl : h("p", { class: "muted", text: "No certificate yet (made on first start)." }),
      h("h2", { text: "Listeners" }), table(["Listener", "Address"], Object.entries(s.listeners).map(([k, v]) =>
        h("tr", {}, h("td", { text: k }), h("td", { class: "mono", text: v }))), "none"),
      h("h2", { text: "Settings" }), h("pre", { class: "json", id: "settings", text: JSON.stringify(s.settings, null, 2) }));
  }
}

// ---- start ----------------------------------------------------------------------------------

window.addEventListener("hashchange", () => render());
document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("POST", "/logout", {}); } catch { /* gone already */ }
    state.csrf = null;
    history.replaceState(null, "", "/");
    showLogin();
  });
  try {
    const me = await fetch(API + "/me", { credentials: "same-origin" });
    if (me.ok) await started(await me.json());
    else showLogin();
  } catch (err) { showLogin(); fail(err); }
});
