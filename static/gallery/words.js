// Search by words: suggestions as one types. Search by region: drag a rectangle on a
// photo; the box (fractions of the picture: left,top,right,bottom) goes into the form's
// box field, which can also be typed without JavaScript.
(function () {
  "use strict";

  // ---- suggestions
  document.querySelectorAll("input[data-suggest]").forEach(function (input) {
    const list = document.getElementById(input.getAttribute("list"));
    if (!list) return;
    let timer = null;
    let asked = "";
    input.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        // Suggest for the last word or phrase being typed.
        const text = input.value.trim();
        if (!text || text === asked) return;
        asked = text;
        fetch("/api/v1/search/words/?prefix=" + encodeURIComponent(text.slice(-100)), { headers: { Accept: "application/json" } })
          .then(function (r) { return r.ok ? r.json() : { words: [] }; })
          .then(function (body) {
            if (input.value.trim() !== text) return;
            list.replaceChildren.apply(list, body.words.map(function (w) {
              const option = document.createElement("option");
              option.value = w;
              return option;
            }));
          })
          .catch(function () {});
      }, 150);
    });
  });

  // ---- region
  function round(v) { return Math.round(Math.min(1, Math.max(0, v)) * 10000) / 10000; }

  document.querySelectorAll("[data-region-picker]").forEach(function (picker) {
    const form = picker.closest("form");
    const image = picker.querySelector("[data-region-image]");
    const rect = picker.querySelector(".region-rect");
    const field = form.querySelector("[data-region-box]");
    if (!image || !rect || !field) return;
    let start = null;

    function show(box) {
      if (!box) { rect.hidden = true; return; }
      rect.hidden = false;
      rect.style.left = (box[0] * 100) + "%";
      rect.style.top = (box[1] * 100) + "%";
      rect.style.width = ((box[2] - box[0]) * 100) + "%";
      rect.style.height = ((box[3] - box[1]) * 100) + "%";
    }
    function at(event) {
      const r = image.getBoundingClientRect();
      return [round((event.clientX - r.left) / r.width), round((event.clientY - r.top) / r.height)];
    }
    function boxFrom(a, b) {
      return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
    }
    image.draggable = false;
    image.addEventListener("pointerdown", function (event) {
      event.preventDefault();
      start = at(event);
      image.setPointerCapture(event.pointerId);
      show(boxFrom(start, start));
    });
    image.addEventListener("pointermove", function (event) {
      if (start) show(boxFrom(start, at(event)));
    });
    image.addEventListener("pointerup", function (event) {
      if (!start) return;
      const box = boxFrom(start, at(event));
      start = null;
      if (box[2] - box[0] < 0.02 || box[3] - box[1] < 0.02) { show(null); field.value = ""; return; }
      show(box);
      field.value = box.join(",");
    });
    field.addEventListener("change", function () {
      const parts = field.value.split(",").map(Number);
      show(parts.length === 4 && parts.every(function (v) { return v >= 0 && v <= 1; }) ? parts : null);
    });
    const clear = form.querySelector("[data-region-clear]");
    if (clear) clear.addEventListener("click", function () { field.value = ""; show(null); });

    // On the search page the picture is the photo being chosen, shown once picked.
    const source = picker.dataset.regionSource && document.getElementById(picker.dataset.regionSource);
    if (source) {
      source.addEventListener("change", function () {
        field.value = "";
        show(null);
        const file = source.files && source.files[0];
        if (!file) { picker.hidden = true; return; }
        if (image.src.startsWith("blob:")) URL.revokeObjectURL(image.src);
        image.src = URL.createObjectURL(file);
        picker.hidden = false;
      });
    }
  });
})();
