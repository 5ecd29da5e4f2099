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
  const $ = (sel) => document.getElementById(sel);
  const steps = ["step-start", "step-code", "step-message", "step-reply", "step-nokey",
                 "step-broken", "step-locked", "step-gone"];
  let subject = "";

  function show(...names) {
    for (const s of steps) $(s).hidden = !names.includes(s);
  }
  function say(el, text) { el.textContent = text; el.hidden = !text; }

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

  async function post(path, fields) {
    const body = new FormData();
    body.append("csrf", csrf);
    for (const [k, v] of Object.entries(fields || {})) body.append(k, v);
    // The token also travels as a header so the server can refuse a forged
    // POST before it reads the body.
    let r;
    try {
      r = await fetch("/m/" + id + "/" + path, { method: "POST", body: body,
                                                 headers: { "X-CSRF-Token": csrf },
                                                 credentials: "same-origin" });
    } catch (e) {
      // Connection dropped or refused: an answer the callers show, never a dead page.
      return { ok: false, status: 0, data: { error: "network" } };
    }
    let data = {};
    try { data = await r.json(); } catch (e) { data = {}; }
    return { ok: r.ok, status: r.status, data: data };
  }

  const messages = {
    "network": "We could not reach the server. Please check your connection and try again.",
    "rate-limited": "Too many requests. Please wait a few minutes and try again.",
    "delivery-failed": "We could not send that just now. Please try again in a minute.",
    "csrf": "This page is out of date. Please reload it.",
    "no-session": "Your session has ended. Please reload the page and ask for a new code.",
    "too-large": "That is too large to send here (the limit is 10 MB).",
    "bad-request": "Please check what you entered and try again.",
    "undeliverable": "Your reply could not be delivered, and trying again will not help. " +
      "Please contact the practice another way, for example by phone.",
    "no-reply": "This message cannot be answered here. Please contact the practice another way.",
    "stale-code": "This code has expired, or a newer code was sent. Please use the newest code, " +
      "or ask for a new one.",
  };
  function failure(res, el) {
    const err = res.data.error;
    if (err === "locked") { show("step-locked"); return; }
    if (["expired", "revoked", "purged", "missing"].includes(err)) { show("step-gone"); return; }
    say(el, messages[err] || "Something went wrong. Please try again.");
  }

  const keyBytes = b64urlToBytes(location.hash.slice(1));
  if (!keyBytes) { show("step-nokey"); return; }

  async function requestCode(errorEl) {
    const res = await post("code");
    if (res.ok) { show("step-code"); $("code").focus(); say($("code-error"), ""); }
    else failure(res, errorEl);
  }
  $("send-code").addEventListener("click", async () => {
    $("send-code").disabled = true;
    await requestCode($("start-error"));
    $("send-code").disabled = false;
  });
  $("resend").addEventListener("click", async () => {
    say($("code-note"), "");
    await requestCode($("code-error"));
    if ($("code-error").hidden) say($("code-note"), "We sent you a new code.");
  });
  $("code-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("open").disabled = true;
    const res = await post("verify", { code: $("code").value });
    $("open").disabled = false;
    say($("code-note"), "");
    if (res.ok) { await openMessage(); return; }
    if (res.data.error === "wrong-code") {
      const n = res.data.remaining;
      say($("code-error"), "That code is not right. " + n + (n === 1 ? " try" : " tries") + " left.");
      $("code").value = "";
      return;
    }
    failure(res, $("code-error"));
  });

  async function openMessage() {
    const r = await fetch("/m/" + id + "/sealed", { credentials: "same-origin" });
    if (r.status === 401) { show("step-start"); return; }
    if (!r.ok) {
      let data = {};
      try { data = await r.json(); } catch (e) { data = {}; }
      failure({ data: data }, $("start-error"));
      if (!$("start-error").hidden) show("step-start");
      return;
    }
    const sealed = await r.json();
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
    render(doc);
  }

  function render(doc) {
    subject = doc.subject || "";
    $("m-subject").textContent = subject || "(no subject)";
    $("m-from").textContent = doc.from || "";
    const when = new Date(doc.date || "");
    $("m-date").textContent = isNaN(when) ? (doc.date || "") :
      when.toLocaleString(undefined, { dateStyle: "long", timeStyle: "short" });
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
        // Sandboxed: no scripts, no same-origin access; the meta CSP blocks every
        // remote load on top of the page's own inherited policy.
        const guard = '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; ' +
          'img-src data:; style-src \'unsafe-inline\'"><base target="_blank">';
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
      btn.addEventListener("click", () => download(a, index));
      li.append(btn);
      files.append(li);
    });
    $("m-attachments").hidden = !(doc.attachments || []).length;
    show("step-message", "step-reply");
  }

  function download(a, index) {
    const url = URL.createObjectURL(new Blob([b64ToBytes(a.data)],
                                             { type: "application/octet-stream" }));
    const link = document.createElement("a");
    link.href = url;
    link.download = a.name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    post("downloaded", { index: String(index) });
  }

  // No reply form when the original has no address to answer (the page says so).
  if ($("reply-form")) $("reply-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    say($("reply-error"), "");
    $("reply-ok").hidden = true;
    const fields = { body: $("reply-body").value,
                     subject: subject.toLowerCase().startsWith("re:") ? subject : "Re: " + subject };
    const file = $("reply-file").files[0];
    if (file) fields.attachment = file;
    if (!fields.body.trim() && !file) { say($("reply-error"), "Please write a message or attach a file."); return; }
    // The server stops reading past the limit (and drops the connection), so say it here.
    if (file && file.size > 10 * 1024 * 1024) { say($("reply-error"), messages["too-large"]); return; }
    $("reply-send").disabled = true;
    const res = await post("reply", fields);
    $("reply-send").disabled = false;
    if (res.ok) {
      $("reply-ok").hidden = false;
      $("reply-body").value = "";
      $("reply-file").value = "";
    } else failure(res, $("reply-error"));
  });

  // Back within a live session (e.g. after a reload): open straight away.
  show("step-start");
  openMessage();
})();
