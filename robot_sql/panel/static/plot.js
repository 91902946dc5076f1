// A small line plot on a <canvas>: the live panel's charts (the report pages draw static SVG: svgplot.js).
// One line per source (the learner, each actor by name), an optional run to compare with (dashed),
// hover values, drag-to-zoom (Shift/Ctrl + wheel too), double-click to reset, smoothing and the
// x-axis (wall time or updates) from the options the page's controls set.
"use strict";

const PLOT_MAX_POINTS = 5000;  // per source
// a spacing this many times the median spacing is a gap (pause, a process down): the line breaks there
const GAP_FACTOR = 5;
const PALETTE = ["#1f6feb", "#d1242f", "#1a7f37", "#8250df", "#bf8700", "#0a7c86", "#e16f24", "#57606a"];
// shared by every plot: the page's controls change them and redraw
const plotOptions = {
  smoothing: 0,  // EMA weight 0..0.99 (as TensorBoard's smoothing: 0 = raw values)
  xAxis: "time",  // "time" (wall clock) or "updates" (the learner's SQL update count when the point was logged)
};

function formatClock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

// running mean of the last `window` values, then an exponential moving average of weight `weight`
// (debiased, so the first points are not pulled towards 0)
function smooth(values, window, weight) {
  const out = [];
  let sum = 0, ema = 0;
  values.forEach((value, i) => {
    sum += value - (i >= window ? values[i - window] : 0);
    const mean = sum / Math.min(i + 1, window);
    ema = weight * ema + (1 - weight) * mean;
    out.push(weight ? ema / (1 - Math.pow(weight, i + 1)) : mean);
  });
  return out;
}

// `curve` (the panel's curve description): title; window > 1 plots the running mean of the last
// `window` values (0/1 episode successes -> success rate); y_range fixes the axis. `marks`
// ([time, label], shared by the plots) are drawn as lines.
class LinePlot {
  constructor(canvas, curve, marks = [], options = plotOptions) {
    this.canvas = canvas;
    this.curve = curve;
    this.marks = marks;
    this.options = options;
    this.stale = null;  // why the values are old, while they are
    this.series = new Map();  // source -> [[time, step, value], ...] in time order
    this.xs = [];  // every point's time in arrival order (all sources)
    this.compare = null;  // {run, shift_s, series: Map(source -> points)}: another run's curve, dashed
    this.view = null;  // [low, high] of x when zoomed, else null (all the data)
    this.hover = null;  // the point under the mouse: {x, y, label, px, py}
    this.drag = null;  // [start px, current px] while selecting a range to zoom into
    this.frame = null;  // the last draw's geometry, for the mouse
    this.tip = document.createElement("div");
    this.tip.className = "plot-tip";
    this.tip.hidden = true;
    canvas.insertAdjacentElement("afterend", this.tip);
    this.listen();
  }

  setStale(reason) {
    if (reason === this.stale) return;
    this.stale = reason;
    this.canvas.classList.toggle("stale", Boolean(reason));
    this.draw();
  }

  get length() {
    return this.xs.length;
  }

  // the sources drawn and their labels, in drawing order (the legend)
  legend() {
    const own = [...this.series.keys()].map((source) => source);
    const other = this.compare ? [...this.compare.series.keys()].map((source) => `${this.compare.run}: ${source}`) : [];
    return own.concat(other);
  }

  // points: [[time, step, value(, source)], ...] in time order
  extend(points) {
    for (const [time, step, value, source = ""] of points) {
      if (!this.series.has(source)) this.series.set(source, []);
      this.series.get(source).push([time, step, value]);
      this.xs.push(time);
    }
    for (const points of this.series.values()) if (points.length > PLOT_MAX_POINTS) points.splice(0, points.length - PLOT_MAX_POINTS);
    if (this.xs.length > PLOT_MAX_POINTS * Math.max(1, this.series.size)) this.xs.splice(0, this.xs.length - PLOT_MAX_POINTS * this.series.size);
    this.draw();
  }

  // start again with another curve (the explorer's metric selector)
  reset(curve) {
    this.curve = curve;
    this.series = new Map();
    this.xs = [];
    this.compare = null;
    this.view = null;
    this.hideHover();
    this.draw();
  }

  // another run's points of the same metric, drawn dashed; in wall time shifted by `shift_s` so that
  // both runs start together
  setCompare(run, points, shift_s) {
    if (!run) { this.compare = null; this.draw(); return; }
    const series = new Map();
    for (const [time, step, value, source = ""] of points) {
      if (!series.has(source)) series.set(source, []);
      series.get(source).push([time, step, value]);
    }
    for (const list of series.values()) if (list.length > PLOT_MAX_POINTS) list.splice(0, list.length - PLOT_MAX_POINTS);
    this.compare = { run, shift_s, series };
    this.draw();
  }

  // every line to draw: {label, color, dashed, points: [[x, y, time, step]], shift}
  lines() {
    const byUpdates = this.options.xAxis === "updates";
    const make = (label, points, color, dashed, shift) => {
      const ys = smooth(points.map((p) => p[2]), this.curve.window || 1, this.options.smoothing);
      return { label, color, dashed, shift,
               points: points.map((p, i) => [byUpdates ? p[1] : p[0] + shift, ys[i], p[0], p[1]]) };
    };
    const out = [];
    let i = 0;
    for (const [source, points] of this.series) out.push(make(source, points, PALETTE[i++ % PALETTE.length], false, 0));
    if (this.compare) {
      for (const [source, points] of this.compare.series) {
        out.push(make(`${this.compare.run}: ${source}`, points, PALETTE[i++ % PALETTE.length], true, this.compare.shift_s));
      }
    }
    return out;
  }

  xLabel(x) {
    return this.options.xAxis === "updates" ? `update ${Math.round(x)}` : formatClock(x);
  }

  // a mark's x: its time, or by updates the step of the last point logged before it
  markX(time, lines) {
    if (this.options.xAxis !== "updates") return time;
    const own = lines.filter((line) => !line.dashed && line.points.length);
    let best = null;
    for (const line of own) {
      for (const p of line.points) if (p[2] <= time && (best === null || p[2] > best[2])) best = p;
    }
    return best === null ? null : best[3];
  }

  draw() {
    const ratio = window.devicePixelRatio || 1;
    const width = this.canvas.clientWidth, height = this.canvas.clientHeight;
    this.canvas.width = width * ratio;
    this.canvas.height = height * ratio;
    const g = this.canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    g.font = "12px system-ui, sans-serif";
    g.fillStyle = this.stale ? "#999" : "#222";
    const lines = this.lines();
    const first = lines.find((line) => !line.dashed && line.points.length);
    const last = first ? "  " + formatNumber(first.points[first.points.length - 1][1]) : "";
    g.fillText(this.curve.title + last + (this.stale ? `  (stale: ${this.stale})` : ""), 8, 14);
    // the legend (with more than one line): rows of swatches and labels under the title
    const legend = [];
    if (lines.length > 1) {
      let x = 8, y = 30;
      for (const line of lines) {
        const used = 26 + g.measureText(line.label).width;
        if (x > 8 && x + used > width) [x, y] = [8, y + 15];
        legend.push([line, x, y]);
        x += used;
      }
    }
    const left = 52, right = width - 10, top = legend.length ? legend[legend.length - 1][2] + 10 : 24, bottom = height - 22;
    g.strokeStyle = "#999";
    g.strokeRect(left, top, right - left, bottom - top);
    this.frame = null;
    const all = lines.flatMap((line) => line.points);
    if (!all.length) {
      g.fillStyle = "#888";
      g.fillText("no data yet", left + 8, top + 18);
      return;
    }
    for (const [line, x, y] of legend) {
      g.fillStyle = line.color;
      g.fillRect(x, y - 6, 14, line.dashed ? 2 : 3);
      g.fillStyle = "#333";
      g.fillText(line.label, x + 18, y);
    }
    let [xLow, xHigh] = this.view || [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
    if (xHigh === xLow) xHigh = xLow + 1;
    const visible = all.filter((p) => p[0] >= xLow && p[0] <= xHigh);
    let [yLow, yHigh] = this.curve.y_range || (visible.length
      ? [Math.min(...visible.map((p) => p[1])), Math.max(...visible.map((p) => p[1]))] : [0, 1]);
    if (yLow === yHigh) { yLow -= 0.5 * (Math.abs(yLow) || 1); yHigh += 0.5 * (Math.abs(yHigh) || 1); }
    const px = (x) => left + ((x - xLow) / (xHigh - xLow)) * (right - left);
    const py = (y) => bottom - ((y - yLow) / (yHigh - yLow)) * (bottom - top);
    this.frame = { left, right, top, bottom, xLow, xHigh, px, py, lines };
    g.fillStyle = "#555";
    g.strokeStyle = "#e4e4e4";
    for (const tick of niceTicks(yLow, yHigh, 4)) {
      g.beginPath(); g.moveTo(left, py(tick)); g.lineTo(right, py(tick)); g.stroke();
      g.fillText(formatNumber(tick), 4, py(tick) + 4);
    }
    for (const tick of niceTicks(xLow, xHigh, 4)) {
      const label = this.options.xAxis === "updates" ? formatNumber(tick) : formatClock(tick);
      const x = Math.min(Math.max(px(tick) - g.measureText(label).width / 2, 0), width - g.measureText(label).width);
      g.fillText(label, x, bottom + 15);
    }
    g.save();
    g.beginPath();
    g.rect(left, top, right - left, bottom - top);
    g.clip();
    g.strokeStyle = "#b36b00";
    g.setLineDash([3, 3]);
    for (const [time, label] of this.marks) {
      const x = this.markX(time, lines);
      if (x === null || x < xLow || x > xHigh) continue;
      g.beginPath(); g.moveTo(px(x), top); g.lineTo(px(x), bottom); g.stroke();
      g.fillStyle = "#b36b00";
      g.fillText(label, Math.min(px(x) + 2, right - g.measureText(label).width), top + 11);
    }
    for (const line of lines) this.drawLine(g, line, px, py);
    g.restore();
    g.setLineDash([]);
    if (this.view) {
      g.fillStyle = "#7a5200";
      const note = "zoomed: double-click to reset";
      g.fillText(note, right - g.measureText(note).width - 4, bottom - 6);
    }
    if (this.drag) {
      g.fillStyle = "rgba(31, 111, 235, 0.15)";
      g.fillRect(Math.min(...this.drag), top, Math.abs(this.drag[1] - this.drag[0]), bottom - top);
    }
    if (this.hover) {
      g.strokeStyle = "#444";
      g.lineWidth = 1;
      g.beginPath(); g.moveTo(this.hover.px, top); g.lineTo(this.hover.px, bottom); g.stroke();
      g.beginPath(); g.moveTo(left, this.hover.py); g.lineTo(right, this.hover.py); g.stroke();
      g.fillStyle = "#222";
      g.beginPath(); g.arc(this.hover.px, this.hover.py, 3.5, 0, 2 * Math.PI); g.fill();
    }
  }

  drawLine(g, line, px, py) {
    const xs = line.points.map((p) => p[0]);
    const spacings = xs.slice(1).map((x, i) => x - xs[i]).filter((d) => d > 0);
    const gap = spacings.length ? GAP_FACTOR * median(spacings) : Infinity;
    // a gap, or x going back (updates after a learner restarted from an older checkpoint), breaks the line
    const joined = (i) => i > 0 && xs[i] >= xs[i - 1] && xs[i] - xs[i - 1] <= gap;
    const color = this.stale && !line.dashed ? "#aaa" : line.color;
    g.strokeStyle = color;
    g.fillStyle = color;
    g.lineWidth = 1.5;
    g.setLineDash(line.dashed ? [6, 4] : []);
    g.beginPath();
    line.points.forEach(([x, y], i) => {
      if (!joined(i) && !joined(i + 1 < xs.length ? i + 1 : -1)) g.fillRect(px(x) - 2, py(y) - 2, 4, 4);  // a point with no line to show it
      if (joined(i)) g.lineTo(px(x), py(y));
      else g.moveTo(px(x), py(y));
    });
    g.stroke();
  }

  // ---- the mouse: hover values, drag to zoom, Shift/Ctrl + wheel to zoom, double-click to reset

  // the point nearest to (mx, my) in canvas pixels: nearest in x on each line, then the nearest of those
  nearest(mx, my) {
    const f = this.frame;
    if (!f || mx < f.left || mx > f.right || my < f.top - 4 || my > f.bottom + 4) return null;
    let best = null;
    for (const line of f.lines) {
      let closest = null;
      for (const p of line.points) {
        if (p[0] < f.xLow || p[0] > f.xHigh) continue;
        const dx = Math.abs(f.px(p[0]) - mx);
        if (closest === null || dx < closest.dx) closest = { dx, p };
      }
      if (closest === null) continue;
      const distance = Math.hypot(closest.dx, f.py(closest.p[1]) - my);
      if (best === null || distance < best.distance) best = { distance, line, p: closest.p };
    }
    if (best === null) return null;
    const [x, y, time, step] = best.p;
    const where = this.options.xAxis === "updates" ? `update ${step}` : formatClock(time) + (best.line.shift ? " (its own clock)" : "");
    const source = best.line.label ? `${best.line.label}: ` : "";
    return { x, y, px: f.px(x), py: f.py(y), text: `${source}${formatNumber(y)} at ${where}` };
  }

  showHover(hover) {
    this.hover = hover;
    this.tip.hidden = !hover;
    this.canvas.dataset.hover = hover ? hover.text : "";
    if (hover) {
      this.tip.textContent = hover.text;
      const right = hover.px > this.canvas.clientWidth / 2;
      this.tip.style.left = `${this.canvas.offsetLeft + hover.px + (right ? -8 : 8)}px`;
      this.tip.style.top = `${this.canvas.offsetTop + Math.max(hover.py - 28, 0)}px`;
      this.tip.style.transform = right ? "translateX(-100%)" : "";
    }
    this.draw();
  }

  hideHover() {
    if (this.hover) this.showHover(null);
  }

  xAt(mx) {
    const f = this.frame;
    return f.xLow + ((mx - f.left) / (f.right - f.left)) * (f.xHigh - f.xLow);
  }

  listen() {
    const c = this.canvas;
    const position = (event) => {
      const box = c.getBoundingClientRect();
      return [event.clientX - box.left, event.clientY - box.top];
    };
    c.addEventListener("mousemove", (event) => {
      const [mx, my] = position(event);
      if (this.drag) {
        this.drag[1] = Math.min(Math.max(mx, this.frame.left), this.frame.right);
        this.draw();
        return;
      }
      this.showHover(this.nearest(mx, my));
    });
    c.addEventListener("mouseleave", () => { this.drag = null; this.hideHover(); });
    c.addEventListener("mousedown", (event) => {
      const [mx] = position(event);
      if (!this.frame || mx < this.frame.left || mx > this.frame.right) return;
      this.drag = [mx, mx];
      event.preventDefault();
    });
    c.addEventListener("mouseup", () => {
      if (!this.drag) return;
      const [a, b] = [Math.min(...this.drag), Math.max(...this.drag)];
      this.drag = null;
      if (b - a >= 5) this.view = [this.xAt(a), this.xAt(b)];
      this.draw();
    });
    c.addEventListener("dblclick", () => { this.view = null; this.draw(); });
    c.addEventListener("wheel", (event) => {
      if (!(event.shiftKey || event.ctrlKey) || !this.frame) return;  // plain wheel scrolls the page
      event.preventDefault();
      const [mx] = position(event);
      const centre = this.xAt(Math.min(Math.max(mx, this.frame.left), this.frame.right));
      const factor = (event.deltaY || event.deltaX) > 0 ? 1.25 : 0.8;
      const { xLow, xHigh } = this.frame;
      this.view = [centre - (centre - xLow) * factor, centre + (xHigh - centre) * factor];
      this.draw();
    }, { passive: false });
  }
}
