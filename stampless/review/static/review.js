// Live SLA countdowns and a gentle refresh of the queue. No framework, no CDN.
// Words come from the page (body data-overdue, data-units "s|min|h"): the console's language.
(function () {
  "use strict";
  var units = ["s", "min", "h"];
  var overdueWord = "overdue";
  function fmt(s) {
    s = Math.abs(s);
    if (s < 60) return s.toFixed(0) + " " + units[0];
    if (s < 3600) return Math.floor(s / 60) + " " + units[1] + " " + String(Math.floor(s % 60)).padStart(2, "0") + " " + units[0];
    return Math.floor(s / 3600) + " " + units[2] + " " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " " + units[1];
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-deadline]").forEach(function (el) {
      var left = (Date.parse(el.dataset.deadline) - now) / 1000;
      el.textContent = left < 0 ? overdueWord + " " + fmt(left) : fmt(left);
      el.classList.toggle("overdue", left < 0);
      var row = el.closest("tr.item");
      if (row) row.classList.toggle("overdue", left < 0);
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var body = document.body;
    if (body.dataset.units) units = body.dataset.units.split("|");
    if (body.dataset.overdue) overdueWord = body.dataset.overdue;
    tick();
    setInterval(tick, 1000);
    if (body.classList.contains("auto-refresh")) {
      setTimeout(function () { window.location.reload(); }, 30000);
    }
  });
})();
