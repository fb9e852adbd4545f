// Keyboard shortcuts on a copyright match: each key clicks the element that carries it
// in data-key (c confirm, d dismiss, r reopen, n next, p previous); h ticks "hide the
// upload". Keys typed into the note or any other field are left alone.
(function () {
  "use strict";
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    var target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) return;
    var key = event.key.toLowerCase();
    if (key === "h") {
      var hide = document.querySelector("[data-review-form] input[name=hide_upload]");
      if (hide) { hide.checked = !hide.checked; event.preventDefault(); }
      return;
    }
    var action = document.querySelector('[data-key="' + key + '"]');
    if (!action) return;
    event.preventDefault();
    action.click();
  });
})();
