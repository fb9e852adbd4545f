// Live status: poll the status endpoint while any shown image is still being analysed.
(function () {
  "use strict";
  var LABELS = { pending: "Pending", processing: "Processing", ready: "Ready", failed: "Failed" };
  function waiting() {
    return Array.prototype.slice.call(document.querySelectorAll("[data-poll-status] [data-image-id]"))
      .filter(function (el) { return el.dataset.status === "pending" || el.dataset.status === "processing"; });
  }
  function tick() {
    var els = waiting();
    if (!els.length) return;
    var ids = els.map(function (el) { return el.dataset.imageId; }).join(",");
    fetch("/images/status/?ids=" + ids, { headers: { Accept: "application/json" } })
      .then(function (r) { return r.json(); })
      .then(function (data) {
        var reload = false;
        data.images.forEach(function (row) {
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
          });
        });
        if (reload) { window.location.reload(); return; }
        var hint = document.querySelector("[data-waiting-text]");
        if (hint && !waiting().length) hint.textContent = "All done.";
        setTimeout(tick, 1000);
      })
      .catch(function () { setTimeout(tick, 3000); });
  }
  document.addEventListener("DOMContentLoaded", function () { setTimeout(tick, 500); });
})();
