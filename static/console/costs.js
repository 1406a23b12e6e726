/* Cost charts (Chart.js) from the numbers the page embeds; the tables beside them show the same numbers. */
(function () {
  "use strict";
  var node = document.getElementById("cost-data");
  if (!node || typeof Chart === "undefined") { return; }
  var data = JSON.parse(node.textContent);
  var palette = ["#0b5cad", "#2f9e8f", "#c58a00", "#b3261e", "#7a5195", "#ef5675", "#155d52", "#5b6470"];
  function bytes(value) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    var i = 0;
    while (value >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
    return value.toFixed(value < 10 && i ? 1 : 0) + " " + units[i];
  }
  function usd(value) { return "$" + Number(value).toLocaleString(undefined, { maximumFractionDigits: value < 1 ? 4 : 2 }); }
  var common = { responsive: true, maintainAspectRatio: false, animation: false,
                 plugins: { legend: { display: false } } };
  function merge(extra) { return Object.assign({}, common, extra); }
  // An all-zero chart says so instead of looking like a broken one.
  var noData = {
    id: "fccNoData",
    afterDraw: function (chart) {
      var empty = chart.data.datasets.every(function (ds) {
        return ds.data.every(function (v) { return Array.isArray(v) ? !v[1] : !v; });
      });
      if (!empty) { return; }
      var area = chart.chartArea;
      var ctx = chart.ctx;
      ctx.save();
      ctx.fillStyle = "#5b6470";
      ctx.font = "italic 14px system-ui, sans-serif";
      ctx.textAlign = "center";
      ctx.fillText("no data yet: the tables hold no rows", (area.left + area.right) / 2, (area.top + area.bottom) / 2);
      ctx.restore();
    }
  };
  Chart.register(noData);
  var charts = {};
  function bar(id, labels, values, format, label) {
    var canvas = document.getElementById(id);
    if (!canvas) { return; }
    charts[id] = new Chart(canvas, {
      type: "bar",
      data: { labels: labels, datasets: [{ label: label, data: values, backgroundColor: palette }] },
      options: merge({ scales: { y: { beginAtZero: true, suggestedMax: 1, ticks: { callback: format, precision: 0 } } },
                       plugins: { legend: { display: false },
                                  tooltip: { callbacks: { label: function (c) { return label + ": " + format(c.raw); } } } } })
    });
  }
  bar("chart-tables", data.by_table.labels, data.by_table.bytes, bytes, "stored");
  bar("chart-components", data.by_component.labels, data.by_component.usd, usd, "USD/month");
  bar("chart-environments", data.by_environment.labels, data.by_environment.bytes, bytes, "stored");
  var online = document.getElementById("chart-online");
  if (online) {
    charts["chart-online"] = new Chart(online, {
      type: "bar",
      data: { labels: data.online.labels, datasets: [{ label: "USD/month (min–max nodes)", data: data.online.range, backgroundColor: "#b3261e" }] },
      options: merge({ indexAxis: "y", scales: { x: { beginAtZero: true, ticks: { callback: usd } } },
                       plugins: { legend: { display: false }, tooltip: { callbacks: { label: function (c) {
                         return usd(c.raw[0]) + " – " + usd(c.raw[1]) + " per month"; } } } } })
    });
  }
  var changes = document.getElementById("chart-changes");
  if (changes) {
    charts["chart-changes"] = new Chart(changes, {
      type: "bar",
      data: { labels: data.changes.labels, datasets: [
        { label: "storage USD/month", data: data.changes.storage_usd_per_month, backgroundColor: "#0b5cad" },
        { label: "backfill scan USD (once)", data: data.changes.backfill_scan_usd, backgroundColor: "#c58a00" },
        { label: "online USD/month (right axis)", data: data.changes.online_usd_per_month, backgroundColor: "#b3261e", yAxisID: "online" }
      ] },
      // Online serving is hundreds of dollars a month, storage cents to dollars: two axes keep both visible.
      options: merge({ scales: { y: { beginAtZero: true, title: { display: true, text: "storage and backfill, USD" }, ticks: { callback: usd } },
                                 online: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false },
                                           title: { display: true, text: "online, USD/month" }, ticks: { callback: usd } } },
                       plugins: { legend: { display: true, position: "bottom" } } })
    });
  }
  window.fccCharts = charts;
})();
