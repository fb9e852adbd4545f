// Compare view: the query (an uploaded photo or a catalog image) beside one result,
// both zoomable, panned together. Added by script only; without it the cards still
// link to each result's page.
(function () {
  "use strict";
  var dialog, panes, slider, level, opener;

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text) node.textContent = text;
    return node;
  }

  function pane(id) {
    var fig = el("figure", { "class": "compare-side" });
    var box = el("div", { "class": "zoom-pane", tabindex: "0", id: id });
    box.appendChild(el("img", { alt: "" }));
    fig.appendChild(box);
    fig.appendChild(el("figcaption"));
    return fig;
  }

  function setZoom(value) {
    var z = Math.max(1, Math.min(4, value));
    slider.value = String(z);
    level.textContent = z.toFixed(1) + "×";
    panes.forEach(function (p) { p.querySelector("img").style.width = z * 100 + "%"; });
  }

  function build() {
    dialog = el("dialog", { "class": "compare", "aria-labelledby": "compare-title" });
    var head = el("div", { "class": "compare-head" });
    head.appendChild(el("h2", { id: "compare-title" }, "Compare"));
    var controls = el("div", { "class": "compare-controls" });
    var label = el("label", { "for": "compare-zoom" }, "Zoom");
    slider = el("input", { type: "range", id: "compare-zoom", min: "1", max: "4", step: "0.5", value: "1" });
    level = el("output", { "for": "compare-zoom" }, "1.0×");
    var out = el("button", { type: "button", "aria-label": "Zoom out" }, "−");
    var inn = el("button", { type: "button", "aria-label": "Zoom in" }, "+");
    var close = el("button", { type: "button", "class": "close" }, "Close");
    [label, out, slider, inn, level, close].forEach(function (n) { controls.appendChild(n); });
    head.appendChild(controls);
    dialog.appendChild(head);
    var body = el("div", { "class": "compare-body" });
    panes = [pane("compare-query"), pane("compare-result")];
    panes.forEach(function (p) { body.appendChild(p); });
    dialog.appendChild(body);
    document.body.appendChild(dialog);

    slider.addEventListener("input", function () { setZoom(parseFloat(slider.value)); });
    out.addEventListener("click", function () { setZoom(parseFloat(slider.value) - 0.5); });
    inn.addEventListener("click", function () { setZoom(parseFloat(slider.value) + 0.5); });
    close.addEventListener("click", function () { dialog.close(); });
    dialog.addEventListener("close", function () { if (opener) opener.focus(); });
    // Pan both sides together, at the same relative position.
    var syncing = false;
    panes.forEach(function (p, i) {
      var box = p.querySelector(".zoom-pane");
      var other = panes[1 - i].querySelector(".zoom-pane");
      box.addEventListener("scroll", function () {
        if (syncing) { syncing = false; return; }
        var fx = box.scrollLeft / Math.max(1, box.scrollWidth - box.clientWidth);
        var fy = box.scrollTop / Math.max(1, box.scrollHeight - box.clientHeight);
        syncing = true;
        other.scrollLeft = fx * (other.scrollWidth - other.clientWidth);
        other.scrollTop = fy * (other.scrollHeight - other.clientHeight);
      });
      box.querySelector("img").addEventListener("dblclick", function () { setZoom(parseFloat(slider.value) >= 2 ? 1 : 2); });
    });
  }

  function show(side, src, text) {
    var img = side.querySelector("img");
    img.src = src;
    img.alt = text;
    side.querySelector("figcaption").textContent = text;
  }

  function open(section, card, button) {
    if (!dialog) build();
    opener = button;
    show(panes[0], section.dataset.compareWith, "Query: " + section.dataset.compareLabel);
    var score = card.querySelector(".score");
    show(panes[1], card.dataset.fullSrc, "Result: " + card.dataset.title + (score ? " (" + score.textContent.trim() + ")" : ""));
    setZoom(1);
    dialog.showModal();
    slider.focus();
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!window.HTMLDialogElement) return;
    document.querySelectorAll("[data-compare-with]").forEach(function (section) {
      if (!section.dataset.compareWith) return;
      section.querySelectorAll(".card[data-full-src]").forEach(function (card) {
        var button = el("button", { type: "button", "class": "compare-button" }, "Compare");
        button.appendChild(el("span", { "class": "visually-hidden" }, " with " + card.dataset.title));
        button.addEventListener("click", function () { open(section, card, button); });
        var actions = card.querySelector(".actions");
        (actions || card).appendChild(button);
      });
    });
  });
})();
