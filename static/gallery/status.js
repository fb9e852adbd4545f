// Live status: poll the status endpoint while any shown image is still being analysed.
// Other scripts add cards later and send "gallery:poll" to start polling again.
(function () {
  "use strict";
  var LABELS = { pending: "Pending", processing: "Processing", ready: "Ready", failed: "Failed" };
  var running = false;
  function waiting() {
    return Array.prototype.slice.call(document.querySelectorAll("[data-poll-status] [data-image-id]"))
      .filter(function (el) { return el.dataset.status === "pending" || el.dataset.status === "processing"; });
  }
  function addMoreLink(el, id) {
    var actions = el.querySelector(".actions");
    if (!actions || actions.querySelector(".more")) return;
    var link = document.createElement("a");
    link.className = "more";
    link.href = "/images/" + id + "/#similar";
    link.textContent = "More like this";
    actions.appendChild(link);
  }
  function update(row) {
    var reload = false;
    document.querySelectorAll('[data-image-id="' + row.id + '"]').forEach(function (el) {
      if (el.dataset.status === row.status) return;
      el.dataset.status = row.status;
      if (el.hasAttribute("data-reload-when-ready") && row.status !== "pending" && row.status !== "processing") reload = true;
      var badge = el.querySelector(".status");
      if (badge) {
        badge.textContent = LABELS[row.status] || row.status;
        badge.className = "status status-" + row.status;
        if (row.reason) badge.title = row.reason;
      }
      if (row.status === "ready") addMoreLink(el, row.id);
    });
    return reload;
  }
  function tick() {
    var els = waiting();
    if (!els.length) { running = false; return; }
    var ids = els.map(function (el) { return el.dataset.imageId; }).join(",");
    fetch("/images/status/?ids=" + ids, { headers: { Accept: "application/json" } })
      .then(function (r) { return r.json(); })
      .then(function (data) {
        var reload = false;
        data.images.forEach(function (row) { reload = update(row) || reload; });
        if (reload) { window.location.reload(); return; }
        var hint = document.querySelector("[data-waiting-text]");
        if (hint && !waiting().length && !document.querySelector("[data-poll-status] .uploading")) hint.textContent = "All done.";
        setTimeout(tick, 1000);
      })
      .catch(function () { setTimeout(tick, 3000); });
  }
  function start(delay) {
    if (running) return;
    running = true;
    setTimeout(tick, delay);
  }
  document.addEventListener("DOMContentLoaded", function () { start(500); });
  document.addEventListener("gallery:poll", function () { start(300); });
})();
