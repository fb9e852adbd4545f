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

  var zoom = 1;

  function boxOf(side) { return side.querySelector(".zoom-pane"); }

  // A point of a pane as fractions of its visible box: the centre unless given.
  function pointIn(box, clientX, clientY) {
    var b = box.getBoundingClientRect();
    return { x: (clientX - b.left - box.clientLeft) / box.clientWidth, y: (clientY - b.top - box.clientTop) / box.clientHeight };
  }

  // Where the picture is at a point of the pane's visible box (fractions of the picture).
  function pictureAt(box, at) {
    var r = box.querySelector("img").getBoundingClientRect(), b = box.getBoundingClientRect();
    var px = b.left + box.clientLeft + at.x * box.clientWidth, py = b.top + box.clientTop + at.y * box.clientHeight;
    var clamp = function (v) { return isFinite(v) ? Math.max(0, Math.min(1, v)) : 0.5; };
    return { x: clamp((px - r.left) / r.width), y: clamp((py - r.top) / r.height), px: px, py: py };
  }

  // Scroll a pane without its twin following: the scroll event it causes is expected.
  function scrollPane(box, left, top) {
    box.scrollLeft = left;
    box.scrollTop = top;
    box.expected = [box.scrollLeft, box.scrollTop];
  }

  // At 1× the whole picture fits its pane; the pane's size leaves out its scrollbars.
  function fittedWidth(box, img) {
    if (!img.naturalWidth || !img.naturalHeight) return box.offsetWidth;
    return Math.min(box.offsetWidth, box.offsetHeight * img.naturalWidth / img.naturalHeight);
  }

  // Zoom both sides, keeping the picture under `at` (the pointer, or the centre) in place.
  function setZoom(value, at) {
    var z = Math.max(1, Math.min(4, value));
    at = at || { x: 0.5, y: 0.5 };
    var boxes = panes.map(boxOf);
    var anchors = boxes.map(function (box) { return pictureAt(box, at); });
    zoom = z;
    slider.value = String(z);
    level.textContent = z.toFixed(1) + "×";
    boxes.forEach(function (box, i) {
      var img = box.querySelector("img");
      img.style.width = z * fittedWidth(box, img) + "px";
      var r = img.getBoundingClientRect(), a = anchors[i];
      var b = box.getBoundingClientRect();
      var px = b.left + box.clientLeft + at.x * box.clientWidth, py = b.top + box.clientTop + at.y * box.clientHeight;
      scrollPane(box, box.scrollLeft + (r.left + a.x * r.width - px), box.scrollTop + (r.top + a.y * r.height - py));
    });
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
    dialog.appendChild(el("p", { "class": "hint compare-hint" }, "Ctrl + scroll or pinch zooms at the pointer; double-click zooms in or out."));
    var body = el("div", { "class": "compare-body" });
    panes = [pane("compare-query"), pane("compare-result")];
    panes.forEach(function (p) { body.appendChild(p); });
    dialog.appendChild(body);
    document.body.appendChild(dialog);

    slider.addEventListener("input", function () { setZoom(parseFloat(slider.value)); });
    out.addEventListener("click", function () { setZoom(zoom - 0.5); });
    inn.addEventListener("click", function () { setZoom(zoom + 0.5); });
    close.addEventListener("click", function () { dialog.close(); });
    dialog.addEventListener("close", function () { if (opener) opener.focus(); });
    panes.forEach(function (p) { p.querySelector("img").addEventListener("load", function () { setZoom(zoom); }); });
    window.addEventListener("resize", function () { if (dialog.open) setZoom(zoom); });
    // Pan both sides together, at the same relative position.
    panes.forEach(function (p, i) {
      var box = boxOf(p);
      var other = boxOf(panes[1 - i]);
      box.addEventListener("scroll", function () {
        var expected = box.expected;
        box.expected = null;
        if (expected && expected[0] === box.scrollLeft && expected[1] === box.scrollTop) return;
        var fx = box.scrollLeft / Math.max(1, box.scrollWidth - box.clientWidth);
        var fy = box.scrollTop / Math.max(1, box.scrollHeight - box.clientHeight);
        scrollPane(other, fx * (other.scrollWidth - other.clientWidth), fy * (other.scrollHeight - other.clientHeight));
      });
      box.querySelector("img").addEventListener("dblclick", function (e) {
        setZoom(zoom >= 2 ? 1 : 2, pointIn(box, e.clientX, e.clientY));
      });
      // Ctrl + wheel (and a touchpad pinch, which browsers send as one) zooms at the pointer;
      // a plain wheel pans.
      box.addEventListener("wheel", function (e) {
        if (!e.ctrlKey) return;
        e.preventDefault();
        var step = e.deltaMode === 1 ? e.deltaY * 33 : e.deltaY;
        setZoom(zoom * Math.exp(-step * 0.0025), pointIn(box, e.clientX, e.clientY));
      }, { passive: false });
      // Two fingers pinch-zoom at their midpoint.
      var pinch = null;
      function spread(t) { return Math.hypot(t[0].clientX - t[1].clientX, t[0].clientY - t[1].clientY); }
      box.addEventListener("touchstart", function (e) {
        pinch = e.touches.length === 2 ? { spread: spread(e.touches), zoom: zoom } : null;
      }, { passive: true });
      box.addEventListener("touchmove", function (e) {
        if (!pinch || e.touches.length !== 2 || !pinch.spread) return;
        e.preventDefault();
        var t = e.touches;
        setZoom(pinch.zoom * spread(t) / pinch.spread, pointIn(box, (t[0].clientX + t[1].clientX) / 2, (t[0].clientY + t[1].clientY) / 2));
      }, { passive: false });
      box.addEventListener("touchend", function (e) { if (e.touches.length < 2) pinch = null; });
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
    // "#id" names the page's own picture of the query (a search's inline preview, sent once).
    var query = section.dataset.compareWith;
    if (query.charAt(0) === "#") query = document.getElementById(query.slice(1)).src;
    show(panes[0], query, "Query: " + section.dataset.compareLabel);
    var score = card.querySelector(".score");
    show(panes[1], card.dataset.fullSrc, "Result: " + card.dataset.title + (score ? " (" + score.textContent.trim() + ")" : ""));
    dialog.showModal();
    setZoom(1);  // once open: the panes have a size to fit the pictures in
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
