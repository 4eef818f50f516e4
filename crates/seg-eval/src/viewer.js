// The report's slice viewers and case table (see viewer.rs); VIEWER_CASES is written before it.
(function () {
  function pad(k) { return String(k).padStart(4, "0"); }
  function viewer(section) {
    const c = VIEWER_CASES[Number(section.dataset.index)];
    const q = (s) => section.querySelector(s);
    const ct = q("img.ct"), layers = {
      reference: q("img.reference"), prediction: q("img.prediction"), lungs: q("img.lungs") };
    const slider = q("input.slice"), preset = q("select.preset"), width = q("input.width"),
      level = q("input.level"), style = q("select.style"), opacity = q("input.opacity"),
      status = q(".status");
    const funcs = document.querySelectorAll("#wl" + section.dataset.index + " feComponentTransfer > *");
    const has = { reference: new Set(c.reference), prediction: new Set(c.prediction), lungs: new Set(c.lungs) };
    let k = c.start;
    function windowing() {
      const w = Math.max(1, Number(width.value)), l = Number(level.value);
      const lo = l - w / 2, span = BASE[1] - BASE[0];
      funcs.forEach((f) => {
        f.setAttribute("slope", String(span / w));
        f.setAttribute("intercept", String((BASE[0] - lo) / w));
      });
    }
    function draw() {
      ct.src = c.dir + "/ct_" + pad(k) + ".jpg";
      for (const name of ["reference", "prediction", "lungs"]) {
        const img = layers[name];
        const on = q("input.show-" + name).checked && has[name].has(k);
        const suffix = name === "lungs" ? "" : style.value;
        if (on) { img.src = c.dir + "/" + name + suffix + "_" + pad(k) + ".png"; }
        img.hidden = !on;
        img.style.opacity = String(Number(opacity.value) / 100);
      }
      slider.value = String(k + 1);
      status.textContent = "slice " + (k + 1) + " / " + c.slices + " (from the inferior end) · " + c.facts;
      section.dataset.slice = String(k);
    }
    function go(to) { k = Math.min(c.slices - 1, Math.max(0, to)); draw(); }
    function lesion(direction) {
      const next = direction > 0 ? c.lesions.find((s) => s > k)
        : c.lesions.slice().reverse().find((s) => s < k);
      if (next !== undefined) { go(next); }
    }
    function choosePreset() {
      if (preset.value === "free") { return; }
      const [lo, hi] = preset.value.split(",").map(Number);
      width.value = String(hi - lo); level.value = String((hi + lo) / 2); windowing();
    }
    slider.addEventListener("input", () => go(Number(slider.value) - 1));
    preset.addEventListener("change", choosePreset);
    for (const input of [width, level]) {
      input.addEventListener("input", () => { preset.value = "free"; windowing(); });
    }
    for (const input of section.querySelectorAll("input[type=checkbox], select.style, input.opacity")) {
      input.addEventListener("input", draw); input.addEventListener("change", draw);
    }
    q("button.next-lesion").addEventListener("click", () => lesion(1));
    q("button.previous-lesion").addEventListener("click", () => lesion(-1));
    q(".stack").addEventListener("wheel", (e) => { e.preventDefault(); go(k + Math.sign(e.deltaY)); },
      { passive: false });
    section.addEventListener("keydown", (e) => {
      if (e.target.tagName === "INPUT" && e.target.type === "number") { return; }
      const moves = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 10, PageDown: -10 };
      if (e.key in moves) { e.preventDefault(); go(k + moves[e.key]); }
      else if (e.key === "n" || e.key === "N") { lesion(1); }
      else if (e.key === "p" || e.key === "P") { lesion(-1); }
    });
    choosePreset(); draw();
  }
  const BASE = __BASE__;
  document.querySelectorAll("section.viewer").forEach(viewer);
  // The case table: a header sorts by its column, a case's link opens its viewer.
  document.querySelectorAll("table.cases").forEach((table) => {
    table.querySelectorAll("th button").forEach((button, column) => {
      let ascending = true;
      button.addEventListener("click", () => {
        const body = table.tBodies[0], rows = Array.from(body.rows);
        const key = (row) => row.cells[column].dataset.sort;
        rows.sort((a, b) => {
          const x = key(a), y = key(b), nx = Number(x), ny = Number(y);
          const order = (x === "" || y === "") ? (x === "") - (y === "")
            : (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
          return ascending ? order : -order;
        });
        rows.forEach((row) => body.appendChild(row));
        ascending = !ascending;
      });
    });
    // A click anywhere on a case's row opens its viewer, as its link does (the link for keyboards).
    table.querySelectorAll("tbody tr").forEach((row) => {
      const link = row.querySelector("a.open-viewer");
      if (!link) { return; }
      row.style.cursor = "pointer";
      row.addEventListener("click", (e) => {
        const section = document.getElementById(link.getAttribute("href").slice(1));
        if (!section) { return; }
        if (e.target !== link) { section.scrollIntoView(); }
        setTimeout(() => section.focus(), 0);
      });
    });
  });
})();
