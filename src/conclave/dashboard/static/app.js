// Conclave dashboard: local times, the connection banner, and the charts drawn from the
// page's JSON data blocks. No inline script anywhere (the CSP forbids it); no eval.
(function () {
  "use strict";

  function localTimes(root) {
    (root || document).querySelectorAll("time[datetime]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (!isNaN(d.getTime())) {
        el.textContent = d.toLocaleString(undefined, {
          year: "numeric", month: "short", day: "2-digit",
          hour: "2-digit", minute: "2-digit", second: "2-digit"
        });
      }
    });
  }

  function banner(show) {
    var el = document.getElementById("conn-banner");
    if (el) { el.hidden = !show; }
  }

  // Live parts: an element with data-events="URL" and data-live="EVENT" is replaced by the
  // HTML of each EVENT of that server-sent event stream (sent only when it changed). The
  // browser reconnects a lost stream by itself (the server asks for 1 s); while it is not
  // connected the banner says so, and body[data-live-state] tells the tests. A stream the
  // server refused (not reconnected by the browser) is opened again after 2 s.
  function live(el) {
    var url = el.getAttribute("data-events");
    var name = el.getAttribute("data-live");
    var received = 0;
    function state(s) { document.body.setAttribute("data-live-state", s); banner(s === "reconnecting"); }
    function open() {
      var source = new EventSource(url);
      source.addEventListener("open", function () { state("open"); });
      source.addEventListener("error", function () {
        state("reconnecting");
        if (source.readyState === EventSource.CLOSED) { window.setTimeout(open, 2000); }
      });
      source.addEventListener(name, function (e) {
        el.innerHTML = e.data;  // rendered and escaped by the server's templates
        received += 1;
        el.setAttribute("data-live-received", String(received));
        localTimes(el);
      });
      // a finished backtest: its report is a whole page with its charts
      source.addEventListener("reload", function () { source.close(); window.location.reload(); });
    }
    state("connecting");
    open();
  }

  function css(name, fallback) {
    var v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return v || fallback;
  }

  function data(id) {
    var el = document.getElementById(id);
    if (!el) { return null; }
    try { return JSON.parse(el.textContent); } catch (err) { return null; }
  }

  function baseOptions() {
    return {
      autoSize: true,
      layout: { background: { type: "solid", color: css("--card", "#fff") },
                textColor: css("--fg", "#111"), attributionLogo: true, panes: { separatorColor: css("--line", "#ccc") } },
      grid: { vertLines: { color: css("--grid", "#eee") }, horzLines: { color: css("--grid", "#eee") } },
      rightPriceScale: { borderColor: css("--line", "#ccc") },
      timeScale: { borderColor: css("--line", "#ccc"), timeVisible: true, secondsVisible: false },
      // the crosshair's time in the viewer's time zone (the axis ticks stay UTC)
      localization: { timeFormatter: function (t) { return new Date(t * 1000).toLocaleString(); } }
    };
  }

  var LC = null;
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];

  function uniqueAscending(points) {
    var seen = {};
    var out = [];
    points.forEach(function (p) {
      if (p.time !== null && !seen[p.time]) { seen[p.time] = true; out.push(p); }
    });
    out.sort(function (a, b) { return a.time - b.time; });
    return out;
  }

  function marketChart(el, d) {
    var c = d.candles;
    var chart = LC.createChart(el, baseOptions());
    var candles = chart.addSeries(LC.CandlestickSeries, {
      upColor: css("--pos", "#1a7f37"), downColor: css("--neg", "#c62828"),
      borderVisible: false, wickUpColor: css("--pos", "#1a7f37"), wickDownColor: css("--neg", "#c62828")
    });
    var rows = c.time.map(function (t, i) {
      return { time: t / 1000, open: c.open[i], high: c.high[i], low: c.low[i], close: c.close[i] };
    });
    candles.setData(rows);
    if (rows.length) {  // the symbol's precision: four significant digits at least, as the tables
      var p = Math.abs(rows[rows.length - 1].close) || 1;
      var decimals = Math.min(8, Math.max(2, 3 - Math.floor(Math.log10(p))));
      candles.applyOptions({ priceFormat: { type: "price", precision: decimals, minMove: Math.pow(10, -decimals) } });
    }
    var first = rows.length ? rows[0].time : 0;
    var last = rows.length ? rows[rows.length - 1].time : 0;
    var signals = uniqueAscending(d.signals.map(function (s) {
      return { time: s.candleTime === null ? null : s.candleTime / 1000, s: s };
    })).filter(function (p) { return p.time >= first && p.time <= last; });
    var markers = signals.map(function (p) {
      var a = p.s.action || "none";
      if (a === "BUY") { return { time: p.time, position: "belowBar", color: css("--pos", "green"), shape: "arrowUp", text: "BUY" }; }
      if (a === "SELL") { return { time: p.time, position: "aboveBar", color: css("--neg", "red"), shape: "arrowDown", text: "SELL" }; }
      return { time: p.time, position: "aboveBar", color: css("--muted", "gray"), shape: "circle", text: a === "HOLD" ? "" : a };
    });
    LC.createSeriesMarkers(candles, markers);
    var panes = {};
    function draw() {
      Object.keys(panes).forEach(function (name) { chart.removeSeries(panes[name]); delete panes[name]; });
      while (chart.panes().length > 1) { chart.removePane(chart.panes().length - 1); }
      var boxes = document.querySelectorAll("#agent-toggles input[type=checkbox]");
      var pane = 1;
      boxes.forEach(function (box, i) {
        if (!box.checked) { return; }
        var name = box.value;
        var points = signals.filter(function (p) {
          var a = p.s.agents[name];
          return a && a.score !== null && a.score !== undefined;
        }).map(function (p) { return { time: p.time, value: p.s.agents[name].score }; });
        var series = chart.addSeries(LC.LineSeries, {
          color: PALETTE[i % PALETTE.length], lineWidth: 2, title: name, pointMarkersVisible: true,
          priceFormat: { type: "price", precision: 2, minMove: 0.01 },
          autoscaleInfoProvider: function () { return { priceRange: { minValue: -1, maxValue: 1 } }; }
        }, pane);
        series.setData(points);
        panes[name] = series;
        pane += 1;
      });
      var all = chart.panes();
      if (all.length > 1) {
        all[0].setHeight(Math.round(el.clientHeight * 0.5));
      }
    }
    draw();
    document.getElementById("agent-toggles").addEventListener("change", draw);
    chart.timeScale().fitContent();
  }

  function lineChart(el, series, percent) {
    var chart = LC.createChart(el, baseOptions());
    series.forEach(function (s) {
      var kind = s.area ? LC.AreaSeries : LC.LineSeries;
      var opts = s.area
        ? { lineColor: s.color, topColor: "rgba(0,0,0,0)", bottomColor: s.color, title: s.title, invertFilledArea: true }
        : { color: s.color, lineWidth: 2, title: s.title };
      if (percent) { opts.priceFormat = { type: "percent" }; }
      var line = chart.addSeries(kind, opts);
      line.setData(s.points);
      if (s.markers) { LC.createSeriesMarkers(line, s.markers); }
    });
    chart.timeScale().fitContent();
  }

  function backtestCharts(d) {
    var t = d.time.map(function (x) { return x / 1000; });
    function pts(values, scale) {
      return t.map(function (time, i) { return { time: time, value: values[i] * (scale || 1) }; });
    }
    var eq = document.getElementById("equity-chart");
    if (eq) {
      lineChart(eq, [
        { title: "strategy", color: css("--accent", "#1f6feb"), points: pts(d.equity) },
        { title: "buy & hold", color: css("--muted", "#888"), points: pts(d.buyAndHold) }
      ]);
    }
    var dd = document.getElementById("drawdown-chart");
    if (dd) {
      lineChart(dd, [{ title: "drawdown", color: css("--neg", "#c62828"), area: true, points: pts(d.drawdown, 100) }], true);
    }
    var tr = document.getElementById("trades-chart");
    if (tr) {
      var have = {};
      t.forEach(function (x) { have[x] = true; });
      var markers = d.fills.map(function (f) {
        var time = f.time / 1000;
        return have[time] ? (f.side === "BUY"
          ? { time: time, position: "belowBar", color: css("--pos", "green"), shape: "arrowUp", text: "B" }
          : { time: time, position: "aboveBar", color: css("--neg", "red"), shape: "arrowDown", text: "S" }) : null;
      }).filter(Boolean);
      markers.sort(function (a, b) { return a.time - b.time; });
      lineChart(tr, [{ title: "close", color: css("--fg", "#111"), points: pts(d.close), markers: markers }]);
    }
  }

  function accountChart(el, d) {
    var chart = LC.createChart(el, baseOptions());
    var t = d.time.map(function (x) { return x / 1000; });
    var equity = chart.addSeries(LC.LineSeries, { color: css("--accent", "#1f6feb"), lineWidth: 2, title: "equity", pointMarkersVisible: true });
    equity.setData(uniqueAscending(t.map(function (time, i) { return { time: time, value: d.equity[i] }; })));
    var dd = chart.addSeries(LC.AreaSeries, {
      lineColor: css("--neg", "#c62828"), topColor: "rgba(0,0,0,0)", bottomColor: css("--neg", "#c62828"),
      invertFilledArea: true, title: "drawdown", priceFormat: { type: "percent" },
      autoscaleInfoProvider: function () { return { priceRange: { minValue: -d.limits.halt * 125, maxValue: 0 } }; }
    }, 1);
    dd.setData(uniqueAscending(t.map(function (time, i) { return { time: time, value: d.drawdown[i] * 100 }; })));
    [["warn", "--warn"], ["reduce", "--c-reduce"], ["halt", "--c-halt"]].forEach(function (l) {
      dd.createPriceLine({ price: -d.limits[l[0]] * 100, color: css(l[1], "#999"), lineWidth: 1,
                           lineStyle: 2, axisLabelVisible: true, title: l[0] });
    });
    chart.panes()[0].setHeight(Math.round(el.clientHeight * 0.55));
    chart.timeScale().fitContent();
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    document.querySelectorAll("[data-events][data-live]").forEach(live);
    LC = window.LightweightCharts || null;
    if (!LC) { return; }
    var market = data("market-data");
    var el = document.getElementById("market-chart");
    if (market && el) { marketChart(el, market); }
    var account = data("account-data");
    var accountEl = document.getElementById("account-chart");
    if (account && accountEl) { accountChart(accountEl, account); }
    var bt = data("backtest-data");
    if (bt) { backtestCharts(bt); }
  });
}());
