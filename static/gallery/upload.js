// Upload enhancement: drag and drop, one request per file with its own progress bar,
// then the file's card follows the analysis live (status.js polls). Without this
// script the form posts all files at once and the status page refreshes itself.
(function () {
  "use strict";
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text) node.textContent = text;
    return node;
  }

  function setBadge(card, status, label) {
    card.dataset.status = status;
    var badge = card.querySelector(".status");
    badge.className = "status status-" + status;
    badge.textContent = label;
  }

  function init() {
    var form = document.querySelector("[data-upload-form]");
    if (!form || !window.FormData || !window.XMLHttpRequest) return;
    var input = form.querySelector("input[type=file]");
    var zone = form.querySelector("[data-drop-zone]");
    var section = document.querySelector("[data-upload-section]");
    var queue = document.querySelector("[data-upload-queue]");
    var hint = document.querySelector("[data-waiting-text]");
    var waiting = [];
    var busy = false;
    form.querySelector("[data-drop-hint]").hidden = false;

    function card(file) {
      var li = el("li", { "class": "card uploading", "data-status": "uploading", "data-title": file.name });
      var frame = el("div", { "class": "thumb-placeholder" });
      var bar = el("progress", { max: "100", value: "0", "aria-label": "Uploading " + file.name });
      frame.appendChild(bar);
      li.appendChild(frame);
      var meta = el("div", { "class": "meta" });
      meta.appendChild(el("span", { "class": "name", title: file.name }, file.name));
      meta.appendChild(el("span", { "class": "status status-uploading", role: "status" }, "Uploading 0%"));
      li.appendChild(meta);
      li.appendChild(el("div", { "class": "actions" }));
      queue.appendChild(li);
      return li;
    }

    function succeeded(li, image) {
      li.classList.remove("uploading");
      li.dataset.imageId = String(image.id);
      li.dataset.title = image.title;
      var link = el("a", { href: image.page_url });
      link.appendChild(el("img", { src: image.thumbnail_url, alt: image.title, width: "200", height: "200" }));
      li.replaceChild(link, li.querySelector(".thumb-placeholder"));
      setBadge(li, image.status, image.status_label);
      document.dispatchEvent(new CustomEvent("gallery:poll"));
    }

    function failed(li, error) {
      li.classList.remove("uploading");
      var bar = li.querySelector("progress");
      if (bar) bar.remove();
      setBadge(li, "rejected", "Not added");
      var message = el("p", { "class": "error", role: "alert" }, error.message || "The upload failed.");
      li.querySelector(".meta").appendChild(message);
      if (error.existing_url) li.querySelector(".actions").appendChild(el("a", { href: error.existing_url }, "View the photo already in the catalog"));
    }

    function send(file, li, done) {
      var data = new FormData();
      data.append("csrfmiddlewaretoken", form.querySelector("[name=csrfmiddlewaretoken]").value);
      data.append("title", form.querySelector("[name=title]").value);
      data.append("files", file, file.name);
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.getAttribute("action"));
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", function (e) {
        if (!e.lengthComputable) return;
        var pct = Math.round((100 * e.loaded) / e.total);
        li.querySelector("progress").value = pct;
        li.querySelector(".status").textContent = "Uploading " + pct + "%";
      });
      xhr.addEventListener("load", function () {
        var body = null;
        try { body = JSON.parse(xhr.responseText); } catch (err) { body = null; }
        if (body && body.images && body.images.length) succeeded(li, body.images[0]);
        else failed(li, (body && body.errors && body.errors[0]) || { message: "The server refused the file (" + xhr.status + ")." });
        done();
      });
      xhr.addEventListener("error", function () { failed(li, { message: "The connection failed; try again." }); done(); });
      xhr.send(data);
    }

    function next() {
      if (busy) return;
      var job = waiting.shift();
      if (!job) { if (hint) hint.textContent = "Photos are being analysed; their status updates by itself."; return; }
      busy = true;
      send(job.file, job.li, function () { busy = false; next(); });
    }

    function add(files) {
      if (!files || !files.length) return;
      section.hidden = false;
      if (hint) hint.textContent = "Uploading…";
      Array.prototype.forEach.call(files, function (file) { waiting.push({ file: file, li: card(file) }); });
      next();
    }

    form.addEventListener("submit", function (e) {
      if (!input.files.length) return;  // let the server explain what is missing
      e.preventDefault();
      add(input.files);
      input.value = "";
    });
    ["dragenter", "dragover"].forEach(function (type) {
      zone.addEventListener(type, function (e) { e.preventDefault(); zone.classList.add("dragging"); });
    });
    ["dragleave", "drop"].forEach(function (type) {
      zone.addEventListener(type, function () { zone.classList.remove("dragging"); });
    });
    zone.addEventListener("drop", function (e) {
      e.preventDefault();
      add(e.dataTransfer && e.dataTransfer.files);
    });
  }
  document.addEventListener("DOMContentLoaded", init);
})();
