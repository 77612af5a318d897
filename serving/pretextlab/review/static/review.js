// Rating page: keyboard shortcuts, one submit per page, and the optional region click. No dependencies.
(function () {
  "use strict";
  var form = document.getElementById("answer");
  if (!form) { return; }
  var kind = form.dataset.kind;
  var scale = parseInt(form.dataset.scale, 10) || 5;
  var sent = false;

  form.addEventListener("submit", function (ev) {
    if (sent) { ev.preventDefault(); return; }  // a second click or key press never sends twice
    sent = true;
    var button = document.getElementById("submit");
    if (button) { button.disabled = true; }
  });

  function choose(name, value) {
    var input = form.querySelector('input[name="' + name + '"][value="' + value + '"]');
    if (!input) { return; }
    input.checked = true;
    if (typeof form.requestSubmit === "function") { form.requestSubmit(); } else { form.submit(); }
  }

  document.addEventListener("keydown", function (ev) {
    var tag = (ev.target && ev.target.tagName) || "";
    if (tag === "TEXTAREA" || (tag === "INPUT" && ev.target.type === "text")) { return; }
    if (ev.altKey || ev.ctrlKey || ev.metaKey) { return; }
    if (ev.key === "ArrowLeft" && form.dataset.prev) { window.location.href = form.dataset.prev; return; }
    if (ev.key === "ArrowRight" && form.dataset.next) { window.location.href = form.dataset.next; return; }
    var n = parseInt(ev.key, 10);
    if (isNaN(n)) { return; }
    if (kind === "likert" && n >= 1 && n <= scale) { ev.preventDefault(); choose("rating", String(n)); }
    if (kind === "pairwise" && n >= 1 && n <= 3) { ev.preventDefault(); choose("preference", ["a", "b", "equal"][n - 1]); }
  });

  var map = document.getElementById("map");
  var rx = document.getElementById("region_x");
  var ry = document.getElementById("region_y");
  var marker = document.getElementById("marker");
  function place() {
    if (!marker || !rx || rx.value === "") { return; }
    marker.hidden = false;
    marker.style.left = (parseFloat(rx.value) * map.clientWidth) + "px";
    marker.style.top = (parseFloat(ry.value) * map.clientHeight) + "px";
  }
  if (map && rx && ry) {
    map.addEventListener("click", function (ev) {
      var box = map.getBoundingClientRect();
      rx.value = Math.min(1, Math.max(0, (ev.clientX - box.left) / box.width)).toFixed(4);
      ry.value = Math.min(1, Math.max(0, (ev.clientY - box.top) / box.height)).toFixed(4);
      place();
    });
    place();
  }
}());
