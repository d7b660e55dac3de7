// Live SLA countdowns and a gentle refresh of the queue. No framework, no CDN.
(function () {
  "use strict";
  function fmt(s) {
    s = Math.abs(s);
    if (s < 60) return s.toFixed(0) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + String(Math.floor(s % 60)).padStart(2, "0") + " s";
    return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-deadline]").forEach(function (el) {
      var left = (Date.parse(el.dataset.deadline) - now) / 1000;
      el.textContent = left < 0 ? "overdue " + fmt(left) : fmt(left);
      el.classList.toggle("overdue", left < 0);
      var row = el.closest("tr.item");
      if (row) row.classList.toggle("overdue", left < 0);
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    tick();
    setInterval(tick, 1000);
    if (document.body.classList.contains("auto-refresh")) {
      setTimeout(function () { window.location.reload(); }, 30000);
    }
  });
})();
