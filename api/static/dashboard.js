// The managers' dashboard: draws the charts from the page's JSON block (#dashboard-data)
// with the vendored Chart.js (static/vendor/chartjs). No inline script: the page's CSP
// allows scripts from this origin only. Each drawn canvas gets `data-values`, the numbers
// its chart holds, and <body> gets data-charts="ready" when all are drawn (for tests).
(function () {
  "use strict";
  var block = document.getElementById("dashboard-data");
  if (!block || typeof Chart === "undefined") { return; }
  var data = JSON.parse(block.textContent);
  var palette = ["#2f6fb0", "#e08a2c", "#3c9a5f", "#b0413e", "#7a5cb0", "#5f8a99", "#c1a13a"];
  Chart.defaults.animation = false;
  Chart.defaults.maintainAspectRatio = false;

  function draw(id, config, values) {
    var canvas = document.getElementById(id);
    if (!canvas) { return; }
    var chart = new Chart(canvas, config);
    canvas.dataset.values = JSON.stringify(values(chart));
  }

  function datasetValues(chart) {
    var out = {};
    chart.data.datasets.forEach(function (ds) { out[ds.label] = ds.data.slice(); });
    return out;
  }

  // Pipeline funnel: opportunities by stage, stacked by product.
  var funnel = data.funnel;
  draw("funnel-chart", {
    type: "bar",
    data: {
      labels: funnel.stages,
      datasets: Object.keys(funnel.by_product).map(function (product, i) {
        return { label: product, data: funnel.by_product[product], backgroundColor: palette[i % palette.length] };
      }),
    },
    options: {
      indexAxis: "y",
      scales: { x: { stacked: true, beginAtZero: true, ticks: { precision: 0 } }, y: { stacked: true } },
      plugins: { title: { display: true, text: "Opportunities by stage" } },
    },
  }, function (chart) {
    // the total per stage, summed from what the chart holds
    var totals = {};
    chart.data.labels.forEach(function (stage, i) {
      totals[stage] = chart.data.datasets.reduce(function (sum, ds) { return sum + ds.data[i]; }, 0);
    });
    return totals;
  });

  // Conversion by referrer: referrals made, decided and converted in the window.
  var refs = data.referrers.items;
  draw("referrers-chart", {
    type: "bar",
    data: {
      labels: refs.map(function (r) { return r.name; }),
      datasets: [
        { label: "referrals", data: refs.map(function (r) { return r.referrals; }), backgroundColor: palette[0] },
        { label: "decided", data: refs.map(function (r) { return r.decided; }), backgroundColor: palette[5] },
        { label: "converted", data: refs.map(function (r) { return r.converted; }), backgroundColor: palette[2] },
      ],
    },
    options: { scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
  }, datasetValues);

  // Scorecards: units won and referrals made / converted in the period, per employee.
  var cards = data.scorecards;
  draw("scorecards-chart", {
    type: "bar",
    data: {
      labels: cards.map(function (c) { return c.name; }),
      datasets: [
        { label: "units", data: cards.map(function (c) { return c.units; }), backgroundColor: palette[0] },
        { label: "referrals made", data: cards.map(function (c) { return c.referrals_made; }), backgroundColor: palette[1] },
        { label: "referrals converted", data: cards.map(function (c) { return c.referrals_converted; }), backgroundColor: palette[2] },
        { label: "cross-LOB referrals", data: cards.map(function (c) { return c.cross_lob_referrals; }), backgroundColor: palette[4] },
      ],
    },
    options: { scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
  }, datasetValues);

  document.body.dataset.charts = "ready";
})();
