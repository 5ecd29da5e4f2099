// Secure message pickup: code check, then decryption in this browser.
// The key is the URL fragment (after "#"): browsers never send it to the server.
// Sealed format: version(1) || nonce(12) || AES-256-GCM ciphertext+tag, with
// associated data "securemail-portal-v1\0<id>\0<message-id>\0<recipient>".
"use strict";
(function () {
  const root = document.getElementById("portal");
  if (!root) return;
  const id = root.dataset.id;
  const csrf = root.dataset.csrf;
  const maxReply = parseInt(root.dataset.maxReply, 10) || 100000;
  const $ = (sel) => document.getElementById(sel);
  const steps = ["step-start", "step-code", "step-message", "step-reply", "step-nokey",
                 "step-broken", "step-locked", "step-gone"];
  let subject = "";
  const draftKey = "securemail-draft:" + id;  // sessionStorage: never leaves this tab
  const WARN_BEFORE = 2 * 60 * 1000;  // warn this long before the session ends
  const TOUCH_EVERY = 2 * 60 * 1000;  // report activity to the server at most this often

  // The pages that replace everything else (no key, broken, locked, gone): their
  // heading takes the focus, so a screen reader reads what happened.
  const states = ["step-nokey", "step-broken", "step-locked", "step-gone"];
  // The tab's title says where the reader is (never the subject: titles are
  // kept in the browser's history).
  const titles = { "step-start": "Secure message", "step-code": "Enter your code",
                   "step-message": "Your message", "step-nokey": "This link is incomplete",
                   "step-broken": "Message cannot be opened", "step-locked": "Message locked",
                   "step-gone": "Message no longer available" };
  const practice = root.dataset.practice || "";
  function show(...names) {
    for (const s of steps) $(s).hidden = !names.includes(s);
    const title = titles[names[0]];
    if (title) document.title = practice ? title + " \u00b7 " + practice : title;
    for (const s of states) if (names.includes(s)) $(s).querySelector("h1").focus();
    // What a step that is now hidden said leaves the live regions with it.
    withdraw((source) => { const step = source.closest(".step"); return !!step && step.hidden; });
  }
  // Screen readers: status changes go to the live regions, which are always
  // rendered (text in an element that appears with it is not reliably read).
  // Cleared first, then set a moment later, so the same text twice is read twice.
  // Each region remembers the element its text came from: when that text leaves
  // the page (cleared, or its step hidden), it leaves the region too, so a
  // screen reader never finds an old "That code is not right" there.
  const liveTimers = {}, liveSources = {};
  function announce(text, urgent, source) {
    const region = $(urgent ? "sr-alert" : "sr-status");
    clearTimeout(liveTimers[region.id]);
    region.textContent = "";
    liveSources[region.id] = text && source ? source : null;
    if (text) liveTimers[region.id] = setTimeout(() => { region.textContent = text; }, 100);
  }
  function withdraw(gone) {
    for (const regionId of ["sr-alert", "sr-status"]) {
      const source = liveSources[regionId];
      if (!source || !gone(source)) continue;
      clearTimeout(liveTimers[regionId]);
      $(regionId).textContent = "";
      liveSources[regionId] = null;
    }
  }
  // invalid: the text is about what was typed in the error's field (the code,
  // the reply): the field is then marked aria-invalid and described by the
  // error, until the error changes or goes.
  const fieldOf = { "code-error": "code", "reply-error": "reply-body" };
  function say(el, text, invalid) {
    el.textContent = text;
    el.hidden = !text;
    if (el.classList.contains("error") || el.classList.contains("ok")) {
      if (text) announce(text, el.classList.contains("error"), el);
      else withdraw((source) => source === el);
    }
    const field = fieldOf[el.id] && $(fieldOf[el.id]);
    if (field) markInvalid(field, el, !!(text && invalid));
  }
  function markInvalid(field, errorEl, on) {
    const ids = (field.getAttribute("aria-describedby") || "").split(/\s+/)
      .filter((x) => x && x !== errorEl.id);
    if (on) {
      ids.push(errorEl.id);
      field.setAttribute("aria-invalid", "true");
    } else field.removeAttribute("aria-invalid");
    if (ids.length) field.setAttribute("aria-describedby", ids.join(" "));
    else field.removeAttribute("aria-describedby");
  }
  // A button that is busy stays focusable (a disabled button drops the keyboard
  // focus to the page): it is marked aria-disabled and its handler ignores it.
  function hold(btn, on) {
    if (!btn) return;
    if (on) btn.setAttribute("aria-disabled", "true"); else btn.removeAttribute("aria-disabled");
  }
  function held(btn) { return !!btn && btn.getAttribute("aria-disabled") === "true"; }
  // What the page is doing while the sealed message downloads (it can be large):
  // shown above the steps, whichever is visible.
  function busy(text) {
    const el = $("opening");
    el.textContent = text;
    el.hidden = !text;
    if (!text) withdraw((source) => source === el);
  }

  function b64urlToBytes(text) {
    if (!/^[A-Za-z0-9_-]{43}$/.test(text)) return null;
    return b64ToBytes(text.replace(/-/g, "+").replace(/_/g, "/") + "=");
  }
  function b64ToBytes(text) {
    const bin = atob(text);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function humanSize(n) {
    if (n < 1024) return n + " bytes";
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KB";
    return (n / 1024 / 1024).toFixed(1) + " MB";
  }

  async function post(path, fields, timeoutMs) {
    const body = new FormData();
    for (const [k, v] of Object.entries(fields || {})) body.append(k, v);
    // The token travels as a header (the server requires it there) so a forged
    // POST is refused before a byte of its body is read.
    let r;
    const stop = timeoutMs && "AbortController" in window ? new AbortController() : null;
    const timer = stop ? setTimeout(() => stop.abort(), timeoutMs) : 0;
    try {
      r = await fetch("/m/" + id + "/" + path, { method: "POST", body: body,
                                                 headers: { "X-CSRF-Token": csrf },
                                                 credentials: "same-origin",
                                                 signal: stop ? stop.signal : undefined });
    } catch (e) {
      // Connection dropped or refused: an answer the callers show, never a dead page.
      return { ok: false, status: 0, data: { error: "network" } };
    }
    finally {
      if (timer) clearTimeout(timer);
    }
    let data = {};
    try { data = await r.json(); } catch (e) { data = {}; }
    return { ok: r.ok, status: r.status, data: data };
  }

  const messages = {
    "network": "We could not reach the server. Please check your connection and try again.",
    "code-length": "Codes have 6 digits. Please type all 6 digits from the email.",
    "rate-limited": "Too many requests. Please wait a few minutes and try again.",
    "delivery-failed": "We could not send that just now. Please try again in a minute.",
    "csrf": "This page is out of date. Please reload it.",
    "no-session": "Your session has ended. Please ask for a new code to continue.",
    "too-large": "That is too large to send here (the limit is 10 MB).",
    "bad-request": "Please check what you entered and try again.",
    "undeliverable": "Your reply could not be delivered, and trying again will not help. " +
      "Please contact the practice another way, for example by phone.",
    "reply-too-long": "Your reply is too long (" + maxReply.toLocaleString("en") +
      " characters max). Please shorten it, or send the rest as an attached file.",
    "no-reply": "This message cannot be answered here. Please contact the practice another way.",
    "stale-code": "This code has expired, or a newer code was sent. Please use the newest code, " +
      "or ask for a new one.",
    "signed-out": "You have signed out. To read the message again, ask for a new code.",
    "signing-out": "Signing out…",
    "signed-out-offline": "You have signed out of this page, but we could not end your session " +
      "on the server just now. Please close every window of this browser, or clear its " +
      "cookies, before leaving this computer.",
    "unavailable": "The service is busy just now. Please try again in a minute.",
  };
  // Withdrawn (revoked), expired or purged: HTTP 410 from every POST, whatever its body.
  function isGone(res) {
    return res.status === 410 || ["expired", "revoked", "purged", "missing"].includes(res.data.error);
  }
  function failure(res, el, invalid) {
    const err = res.data.error;
    if (isGone(res)) { gone(); return; }
    if (err === "no-session") { sessionEnded(); return; }
    if (err === "locked") { show("step-locked"); return; }
    // The limit of codes for this message, not the per-connection one.
    const perHour = res.data.codes_per_hour;
    if (err === "rate-limited" && perHour) {
      say(el, "We send at most " + perHour + " codes an hour for a message, and " + perHour +
          " were sent in the last hour. Please use the newest code we sent, or ask for a new " +
          "one later (within the hour).");
      return;
    }
    say(el, messages[err] || "Something went wrong. Please try again.", invalid);
  }

  const keyBytes = b64urlToBytes(location.hash.slice(1));
  if (!keyBytes) { show("step-nokey"); return; }

  // True once a code opened a session in this browser: "Open message" then
  // fetches the message again instead of sending the (now used) code again.
  let verified = false;

  async function requestCode(errorEl) {
    const res = await post("code");
    if (res.ok) { verified = false; showCodeEntry(); }
    else failure(res, errorEl);
  }
  function showCodeEntry() {
    show("step-code");
    $("code").focus();
    say($("code-error"), "");
  }

  // A code for this message was sent a moment ago (a second tab, a reload): the
  // page offers to type it instead of replacing it with a new one.
  function forgetSentCode() {
    $("code-sent").hidden = true;
    $("have-code").hidden = true;
    $("will-send").hidden = false;
    $("send-code").textContent = "Email me a code";
    $("send-code").classList.remove("btn-secondary");
  }
  if (!$("code-sent").hidden) {
    const at = new Date($("code-sent-at").getAttribute("datetime"));
    if (!isNaN(at)) {
      $("code-sent-at").textContent = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    }
    // Counted from the server's answer, not this computer's clock.
    const validFor = parseInt($("code-sent").dataset.validFor, 10) || 0;
    setTimeout(forgetSentCode, validFor * 1000);
  }
  $("have-code").addEventListener("click", () => {
    verified = false;
    say($("start-error"), "");
    showCodeEntry();
  });
  $("send-code").addEventListener("click", async () => {
    if (held($("send-code"))) return;
    hold($("send-code"), true);
    await requestCode($("start-error"));
    hold($("send-code"), false);
  });
  $("resend").addEventListener("click", async () => {
    if (held($("resend"))) return;
    hold($("resend"), true);
    say($("code-note"), "");
    await requestCode($("code-error"));
    hold($("resend"), false);
    if ($("code-error").hidden) say($("code-note"), "We sent you a new code.");
  });
  function wrongCode(n) {
    let text = "That code is not right. ";
    if (n === 1) {
      text += "1 try left: one more wrong code locks this message until " +
        (practice || "the practice") + " sends it again. If you are not sure of the code, " +
        "ask for a new one.";
    } else {
      text += n + " tries left.";
    }
    return text;
  }
  $("code-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    // Once only: a second press while the code is checked would send the used
    // code again (a wrong try), and while the message downloads a second download.
    if (held($("open")) || opening) return;
    say($("code-error"), "");
    if (verified) {  // the code worked; only fetching the message failed
      hold($("open"), true);
      await openMessage($("code-error"));
      hold($("open"), false);
      return;
    }
    // Codes have 6 digits (spaces allowed): anything else is a typo, said
    // here and not sent (it could never be right, and would cost a try).
    const digits = $("code").value.replace(/\s/g, "");
    if (!/^[0-9]{6}$/.test(digits)) {
      say($("code-error"), digits ? messages["code-length"] :
        "Please type the 6-digit code from the email.", true);
      $("code").focus();
      return;
    }
    hold($("open"), true);
    const res = await post("verify", { code: $("code").value });
    say($("code-note"), "");
    if (res.ok) {
      verified = true;
      sessionEnd = 0;
      await openMessage($("code-error"));
      hold($("open"), false);
      return;
    }
    hold($("open"), false);
    if (res.data.error === "wrong-code") {
      say($("code-error"), wrongCode(res.data.remaining), true);
      $("code").value = "";
      $("code").focus();  // typed again right there; the error describes the field
      return;
    }
    const invalid = ["stale-code", "code-length", "bad-request"].includes(res.data.error);
    failure(res, $("code-error"), invalid);
    if (invalid) $("code").focus();
  });

  // One download at a time: pressing "Open message" again while the sealed
  // message downloads does nothing (the page says it is opening it).
  let opening = false;
  async function openMessage(errorEl, onLoad) {
    if (opening) return;
    opening = true;
    try {
      await fetchAndOpen(errorEl, onLoad);
    } finally {
      opening = false;
      busy("");
    }
  }
  // The sealed message's body, read as it arrives so that the page can say how
  // far it is (its size is the answer's Content-Length, when the server sent one).
  async function readSealed(r) {
    const total = parseInt(r.headers.get("content-length") || "", 10) || 0;
    const label = "Opening your message\u2026";
    if (total) {
      busy(label + " (" + humanSize(total) + ")");
      // Large: a screen reader hears the size once, not every step of the way.
      if (total >= 1024 * 1024) {
        announce("Opening your message (" + humanSize(total) + "). This can take a while on " +
                 "a slow connection.", false, $("opening"));
      }
    }
    if (!r.body || !r.body.getReader) return JSON.parse(await r.text());
    const reader = r.body.getReader();
    const chunks = [];
    let got = 0, shown = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      got += value.length;
      if (total && Date.now() - shown > 250) {
        shown = Date.now();
        busy(label + " " + humanSize(Math.min(got, total)) + " of " + humanSize(total));
      }
    }
    const bytes = new Uint8Array(got);
    let at = 0;
    for (const c of chunks) { bytes.set(c, at); at += c.length; }
    return JSON.parse(new TextDecoder().decode(bytes));
  }
  // onLoad: the check for a live session when the page loads, which usually
  // finds none; the busy note shows only once the message is really coming.
  async function fetchAndOpen(errorEl, onLoad) {
    let r, sealed;
    if (!onLoad) {
      busy("Opening your message\u2026");
      announce("Opening your message\u2026", false, $("opening"));
    }
    try {
      r = await fetch("/m/" + id + "/sealed", { credentials: "same-origin" });
      if (r.ok) {
        if (onLoad) busy("Opening your message\u2026");
        sealed = await readSealed(r);
      }
    } catch (e) {
      // Connection dropped: say so; the button tries again (without the used code).
      say(errorEl, messages["network"]);
      return;
    }
    if (r.status === 401) { verified = false; show("step-start"); return; }
    if (!r.ok) {
      let data = {};
      try { data = await r.json(); } catch (e) { data = {}; }
      // Busy for a moment (503): like a network drop, say so here; the button
      // tries again (without the used code).
      if (data.error === "unavailable") { say(errorEl, messages["unavailable"]); return; }
      failure({ data: data }, $("start-error"));
      if (!$("start-error").hidden) show("step-start");
      return;
    }
    verified = false;
    let doc;
    try {
      const blob = b64ToBytes(sealed.ciphertext);
      if (blob[0] !== 1) throw new Error("version");
      const aad = new TextEncoder().encode(["securemail-portal-v1", id, sealed.message_id,
                                            sealed.recipient].join("\0"));
      const key = await crypto.subtle.importKey("raw", keyBytes, "AES-GCM", false, ["decrypt"]);
      const plain = await crypto.subtle.decrypt(
        { name: "AES-GCM", iv: blob.slice(1, 13), additionalData: aad, tagLength: 128 },
        key, blob.slice(13));
      doc = JSON.parse(new TextDecoder().decode(plain));
    } catch (e) {
      show("step-broken");
      return;
    }
    render(doc, sealed.sealed_at);
    // Keyboard and screen reader users land on the message, not on the used form.
    $("m-subject").focus();
    announce("Message opened.", false, $("m-subject"));
    if (!sessionEnd) touch();  // back within a live session: learn when it ends
  }

  // ---- Session: extended on activity, a warning before it ends, drafts kept.
  let sessionEnd = 0, sessionFinal = false, maxMinutes = 60, lastTouch = 0;
  let warnTimer = 0, endTimer = 0;
  function sessionFrom(data) {
    if (typeof data.expires_in !== "number") return;
    sessionEnd = Date.now() + data.expires_in * 1000;
    sessionFinal = !!data.final;
    if (typeof data.max_minutes === "number") maxMinutes = data.max_minutes;
    lastTouch = Date.now();
    root.dataset.sessionEnd = new Date(sessionEnd).toISOString();  // for tests and styles
    clearTimeout(warnTimer);
    clearTimeout(endTimer);
    hideWarning();
    warnTimer = setTimeout(sessionWarning, Math.max(0, sessionEnd - WARN_BEFORE - Date.now()));
    endTimer = setTimeout(sessionEnded, Math.max(0, sessionEnd - Date.now()));
  }
  // errorEl: where "Stay signed in" shows a failure; a check-in on activity only
  // acts on an ended session or a withdrawn message.
  // One check-in at a time: pressing "Stay signed in" is also activity (its
  // pointerdown), and two requests answered out of order left the activity
  // clock on the later answer, skipping the next check-in.
  let touching = null;
  async function touch(errorEl) {
    lastTouch = Date.now();
    if (!touching) touching = post("session").finally(() => { touching = null; });
    const res = await touching;
    if (res.ok) sessionFrom(res.data);
    else if (isGone(res) || res.data.error === "no-session" || res.data.error === "locked") {
      failure(res, null);
    } else if (errorEl) failure(res, errorEl);
  }
  function activity() {
    if (sessionEnd && !sessionFinal && Date.now() - lastTouch >= TOUCH_EVERY) touch();
  }
  for (const kind of ["keydown", "pointerdown", "scroll", "input"]) {
    document.addEventListener(kind, activity, { passive: true, capture: true });
  }
  function sessionWarning() {
    if (!sessionEnd) return;
    const minutes = Math.max(1, Math.round((sessionEnd - Date.now()) / 60000));
    const when = minutes === 1 ? "in about a minute" : "in about " + minutes + " minutes";
    let text = "For your privacy, your session ends " + when + ".";
    if (sessionFinal) {
      text += " A session lasts at most " + maxMinutes + " minutes; after that, ask for a new " +
        "code. Your unsent reply is kept in this tab.";
    }
    say($("session-warning-text"), text);
    $("stay").hidden = sessionFinal;
    $("session-warning").hidden = false;
    announce(text, true, $("session-warning"));
  }
  function hideWarning() {
    $("session-warning").hidden = true;
    withdraw((source) => source === $("session-warning"));
  }
  function stopSession() {
    verified = false;
    clearTimeout(warnTimer);
    clearTimeout(endTimer);
    sessionEnd = 0;
    delete root.dataset.sessionEnd;
    hideWarning();
    clearMessage();
  }
  // The message was withdrawn, expired or purged while open: nothing of it stays,
  // but a reply the client was writing does (their own words, not the message's):
  // shown read-only, to copy and send another way.
  function gone() {
    const unsent = $("reply-body") ? $("reply-body").value : "";
    const file = $("reply-file") && $("reply-file").files[0];
    stopSession();
    $("gone-draft").value = unsent.trim() ? unsent : "";
    $("gone-reply").hidden = !unsent.trim();
    $("gone-reply-file").textContent = file && unsent.trim() ?
      "The file you attached (" + file.name + ") was not sent either." : "";
    $("gone-reply-file").hidden = !$("gone-reply-file").textContent;
    show("step-gone");
  }
  function sessionEnded() {
    stopSession();
    show("step-start");
    let note = "Your session has ended, for your privacy. Please ask for a new code to continue.";
    if (loadDraft()) note += " Your unsent reply is kept in this tab.";
    say($("start-note"), note);
    $("start-heading").focus();  // what had the focus (the message, the reply) is gone
  }
  $("stay").addEventListener("click", () => touch($("session-warning-text")));

  function loadDraft() {
    try { return sessionStorage.getItem(draftKey) || ""; } catch (e) { return ""; }
  }
  function saveDraft(text) {
    try {
      if (text) sessionStorage.setItem(draftKey, text); else sessionStorage.removeItem(draftKey);
    } catch (e) { /* storage full or off: the draft stays in the page only */ }
  }
  const EMPTY_REPLY = "Please write a message or attach a file.";
  if ($("reply-body")) $("reply-body").addEventListener("input", () => {
    const text = $("reply-body").value;
    saveDraft(text);
    // maxlength stops typing at the limit (and cuts a paste): say why.
    const said = $("reply-error").textContent;
    if (text.length >= maxReply) say($("reply-error"), messages["reply-too-long"], true);
    else if (said === messages["reply-too-long"] || (said === EMPTY_REPLY && text.trim())) {
      say($("reply-error"), "");  // fixed: the field is no longer marked invalid
    }
  });
  if ($("reply-file")) $("reply-file").addEventListener("change", () => {
    if ($("reply-file").files.length && $("reply-error").textContent === EMPTY_REPLY) {
      say($("reply-error"), "");
    }
  });

  // The decrypted content leaves the page when the session ends.
  function clearMessage() {
    for (const el of Array.from(document.querySelectorAll(".body-part"))) {
      if (el.id === "m-text" || el.id === "m-html") {
        el.hidden = true;
        el.classList.remove("body-part");
        if (el.id === "m-text") el.textContent = ""; else el.removeAttribute("srcdoc");
      } else el.remove();
    }
    $("m-files").textContent = "";
    say($("files-error"), "");
    for (const f of ["m-subject", "m-from", "m-to", "m-cc", "m-date"]) if ($(f)) $(f).textContent = "";
  }

  function render(doc, sealedAt) {
    clearMessage();
    say($("start-note"), "");
    forgetSentCode();  // it was used: a new code is needed after this session
    const draft = loadDraft();  // typed before the session ended, or before a reload
    if (draft && $("reply-body")) $("reply-body").value = draft;
    subject = doc.subject || "";
    $("m-subject").textContent = subject || "(no subject)";
    // The header fields a mail program shows; a row without a value is left out
    // (documents sealed before "cc" was kept have none).
    for (const [field, el] of [["from", "m-from"], ["to", "m-to"], ["cc", "m-cc"]]) {
      const value = typeof doc[field] === "string" ? doc[field].trim() : "";
      $(el).textContent = value;
      $(el + "-row").hidden = !value;
    }
    const long = { dateStyle: "long", timeStyle: "short" };
    const when = new Date(doc.date || "");
    const sealedWhen = new Date(sealedAt || "");
    if (!isNaN(when)) {
      $("m-date-label").textContent = "Date";
      $("m-date").textContent = when.toLocaleString(undefined, long);
    } else if ((doc.date || "").trim()) {
      $("m-date-label").textContent = "Date";
      $("m-date").textContent = doc.date.trim();
    } else if (!isNaN(sealedWhen)) {
      // No Date in the message: when the practice sent it to the portal instead.
      $("m-date-label").textContent = "Sealed";
      $("m-date").textContent = sealedWhen.toLocaleString(undefined, long) +
        " (the message has no date; this is when it was sealed for you)";
    }
    $("m-date-row").hidden = !$("m-date").textContent;
    // Every body part, in order. Older documents have only "text" and "html".
    const parts = Array.isArray(doc.parts) ? doc.parts :
      (doc.html ? [{ type: "text/html", content: doc.html }]
                : [{ type: "text/plain", content: doc.text || "" }]);
    const textTemplate = $("m-text"), htmlTemplate = $("m-html");
    const holder = textTemplate.parentNode;
    let anchor = htmlTemplate;
    let firstText = true, firstHtml = true;
    for (const part of parts) {
      let el;
      if (part.type === "text/html") {
        el = firstHtml ? htmlTemplate : htmlTemplate.cloneNode(false);
        if (!firstHtml) el.removeAttribute("id");
        firstHtml = false;
        // Sandboxed: no scripts, no forms, no top navigation (same-origin only so
        // that fitFrame can read its height); the meta CSP blocks every remote
        // load on top of the page's own inherited policy. Long words and links
        // wrap instead of making the frame scroll sideways (the message's own
        // styles, which come after, can still say otherwise).
        const guard = '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; ' +
          'img-src data:; style-src \'unsafe-inline\'"><base target="_blank">' +
          '<style>html { overflow-wrap: anywhere; }</style>';
        el.classList.remove("fitted");
        el.style.height = "";
        el.onload = () => fitFrame(el);
        el.srcdoc = guard + String(part.content || "");
      } else {
        el = firstText ? textTemplate : textTemplate.cloneNode(false);
        if (!firstText) el.removeAttribute("id");
        firstText = false;
        el.textContent = String(part.content || "");
      }
      el.classList.add("body-part");
      el.hidden = false;
      holder.insertBefore(el, anchor.nextSibling);
      anchor = el;
    }
    const files = $("m-files");
    files.textContent = "";
    (doc.attachments || []).forEach((a, index) => {
      const li = document.createElement("li");
      const btn = document.createElement("button");
      btn.type = "button";
      btn.className = "file";
      const name = document.createElement("span");
      name.className = "file-name";
      name.textContent = a.name;
      const size = document.createElement("span");
      size.className = "file-size";
      size.textContent = humanSize(a.size);
      btn.append(name, size);
      btn.addEventListener("click", () => download(a, index, btn));
      li.append(btn);
      files.append(li);
    });
    $("m-attachments").hidden = !(doc.attachments || []).length;
    show("step-message", "step-reply");
  }

  // An HTML body's frame is as tall as what it shows: no scrolling box inside the
  // page, and printing shows all of it. The frame runs no script; it is
  // same-origin (sandbox allow-same-origin, no allow-scripts) only so that this
  // page can measure it.
  function fitFrame(frame) {
    let doc = null;
    try { doc = frame.contentDocument; } catch (e) { doc = null; }
    const root = doc && (doc.scrollingElement || doc.documentElement);
    if (!root || !frame.offsetParent || !frame.srcdoc) return;  // not shown: nothing to fit
    const x = window.scrollX, y = window.scrollY;
    const border = frame.offsetHeight - frame.clientHeight;
    frame.classList.add("fitted");
    frame.style.height = "0px";  // measure the content, not the frame's own height
    const content = root.scrollHeight;
    frame.style.height = (content + border) + "px";
    // A horizontal scroll bar (a wide table) takes room from the content.
    const bar = Math.max(0, (frame.contentWindow ? frame.contentWindow.innerHeight : 0) -
                            root.clientHeight);
    if (bar) frame.style.height = (content + border + bar) + "px";
    window.scrollTo(x, y);  // the brief shrink above must not move the reader
  }
  function fitFrames() {
    for (const f of Array.from(document.querySelectorAll("iframe.body-part"))) fitFrame(f);
  }
  let fitPending = 0;
  window.addEventListener("resize", () => {
    // Text wraps differently at another width: fit again, once per frame.
    if (fitPending) return;
    fitPending = requestAnimationFrame(() => { fitPending = 0; fitFrames(); });
  });
  // Not refitted for print: the print layout's width is not known here (an
  // emulated print medium has the screen's), and a frame fitted to a wider page
  // would cut off the end of the message on paper. portal.css instead makes the
  // printed frame at least as wide as on screen, so the screen's height holds it.

  // The download is recorded (audit log) first; the file is saved only once the
  // server accepted the record. Withdrawn or expired (410) or no session (401):
  // the message leaves the page and nothing is saved.
  async function download(a, index, btn) {
    if (held(btn)) return;
    say($("files-error"), "");
    hold(btn, true);
    const res = await post("downloaded", { index: String(index) });
    hold(btn, false);
    if (!res.ok) { failure(res, $("files-error")); return; }
    const url = URL.createObjectURL(new Blob([b64ToBytes(a.data)],
                                             { type: "application/octet-stream" }));
    const link = document.createElement("a");
    link.href = url;
    link.download = a.name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  // No reply form when the original has no address to answer (the page says so).
  if ($("reply-form")) $("reply-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (held($("reply-send"))) return;  // sending: once only
    say($("reply-error"), "");
    $("reply-ok").hidden = true;
    const fields = { body: $("reply-body").value,
                     subject: subject.toLowerCase().startsWith("re:") ? subject : "Re: " + subject };
    const file = $("reply-file").files[0];
    if (file) fields.attachment = file;
    if (!fields.body.trim() && !file) {
      say($("reply-error"), EMPTY_REPLY, true);
      $("reply-body").focus();
      return;
    }
    if (fields.body.length > maxReply) { say($("reply-error"), messages["reply-too-long"], true); return; }
    // The server stops reading past the limit (and drops the connection), so say it here.
    if (file && file.size > 10 * 1024 * 1024) { say($("reply-error"), messages["too-large"]); return; }
    hold($("reply-send"), true);
    const res = await post("reply", fields);
    hold($("reply-send"), false);
    if (res.ok) {
      say($("reply-ok"), "Your reply was sent securely.");
      $("reply-body").value = "";
      saveDraft("");
      $("reply-file").value = "";
    } else failure(res, $("reply-error"), res.data.error === "reply-too-long");
  });

  // Sign out: the server ends the session (and clears its cookie), the page
  // forgets the message and any unsent reply. Done on this page whatever the
  // server answers: someone may be walking away from a shared computer.
  // The page is cleared first (the server may be slow or unreachable), and so
  // is every other tab of this message in this browser: they share the cookie.
  const tabs = "BroadcastChannel" in window ? new BroadcastChannel("securemail-" + id) : null;
  function signedOutHere(note) {
    discardReply();
    stopSession();
    show("step-start");
    say($("start-error"), "");
    say($("start-note"), note);
  }
  if (tabs) tabs.onmessage = (event) => {
    if (event.data === "signed-out") signedOutHere(messages["signed-out"]);
  };
  $("sign-out").addEventListener("click", async () => {
    if (held($("sign-out"))) return;
    hold($("sign-out"), true);
    signedOutHere(messages["signing-out"]);
    if (tabs) tabs.postMessage("signed-out");
    $("start-heading").focus();
    const res = await post("signout", {}, 10000);
    hold($("sign-out"), false);
    const ended = res.ok || res.data.error === "no-session" || isGone(res);
    say($("start-note"), ended ? messages["signed-out"] : messages["signed-out-offline"]);
  });
  function discardReply() {
    saveDraft("");
    if ($("reply-body")) $("reply-body").value = "";
    if ($("reply-file")) $("reply-file").value = "";
    if ($("reply-error")) say($("reply-error"), "");
    if ($("reply-ok")) say($("reply-ok"), "");
  }

  // Back within a live session (e.g. after a reload): open straight away.
  show("step-start");
  openMessage($("start-error"), true);
})();
