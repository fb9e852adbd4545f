// The match page: draws the keypoint correspondences between the protected work and the
// upload on request. The points are fractions of each image's width and height, so they
// follow the pictures at any displayed size. Without JavaScript the button stays hidden.
(function () {
  "use strict";
  const root = document.getElementById("evidence");
  const data = document.getElementById("evidence-data");
  const button = document.querySelector(".evidence-toggle");
  if (!root || !data || !button) return;
  const evidence = JSON.parse(data.textContent);
  const layer = root.querySelector(".evidence-lines");
  const work = root.querySelector('img[data-evidence-side="work"]');
  const upload = root.querySelector('img[data-evidence-side="upload"]');
  if (!layer || !work || !upload || !Array.isArray(evidence.pairs) || !evidence.pairs.length) return;
  const NS = "http://www.w3.org/2000/svg";
  let shown = false;

  function element(name, attributes) {
    const node = document.createElementNS(NS, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
    return node;
  }

  function draw() {
    layer.replaceChildren();
    if (!shown) return;
    const box = root.getBoundingClientRect();
    const w = work.getBoundingClientRect();
    const u = upload.getBoundingClientRect();
    layer.setAttribute("viewBox", `0 0 ${box.width} ${box.height}`);
    for (const [ux, uy, wx, wy] of evidence.pairs) {
      const x1 = w.left - box.left + wx * w.width;
      const y1 = w.top - box.top + wy * w.height;
      const x2 = u.left - box.left + ux * u.width;
      const y2 = u.top - box.top + uy * u.height;
      layer.append(element("line", { class: "evidence-line", x1, y1, x2, y2 }));
      layer.append(element("circle", { class: "evidence-point", cx: x1, cy: y1, r: 3 }));
      layer.append(element("circle", { class: "evidence-point", cx: x2, cy: y2, r: 3 }));
    }
  }

  button.hidden = false;
  button.addEventListener("click", () => {
    shown = !shown;
    button.textContent = shown ? "Hide keypoint correspondences" : "Show keypoint correspondences";
    button.setAttribute("aria-pressed", String(shown));
    root.classList.toggle("evidence-showing", shown);
    draw();
  });
  window.addEventListener("resize", draw);
  for (const img of [work, upload]) if (!img.complete) img.addEventListener("load", draw);
})();
