// A small line plot on a <canvas>: the panel's only charting (no libraries, works offline).
"use strict";

const PLOT_MAX_POINTS = 5000;
// a spacing this many times the median spacing is a gap (pause, a process down): the line breaks there
const GAP_FACTOR = 5;

// about `count` round tick values covering [low, high]
function niceTicks(low, high, count) {
  const span = high - low || Math.abs(high) || 1;
  const raw = span / count;
  const magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((f) => f * magnitude).find((s) => s >= raw);
  const ticks = [];
  for (let v = Math.ceil(low / step) * step; v <= high + step * 1e-9; v += step) ticks.push(v);
  return ticks;
}

function formatNumber(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(1);
  if (a >= 100) return v.toFixed(0);
  if (a >= 1) return v.toFixed(2).replace(/\.?0+$/, "");
  return v.toPrecision(2);
}

function formatClock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

// x is wall-clock time (every process logs against it). `curve` (the panel's Curve): title;
// window > 1 plots the running mean of the last `window` values (0/1 episode successes -> success
// rate); y_range fixes the axis. `marks` ([time, label], shared by the plots) are drawn as lines.
class LinePlot {
  constructor(canvas, curve, marks = []) {
    this.canvas = canvas;
    this.curve = curve;
    this.marks = marks;
    this.stale = null;  // why the values are old, while they are
    this.raw = [];
    this.xs = [];
    this.ys = [];
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

  // points: [[time, step, value], ...] in time order
  extend(points) {
    for (const [time, , value] of points) {
      this.raw.push(value);
      if (this.raw.length > this.curve.window) this.raw.shift();
      this.xs.push(time);
      this.ys.push(this.raw.reduce((sum, v) => sum + v, 0) / this.raw.length);
    }
    if (this.xs.length > PLOT_MAX_POINTS) {
      this.xs.splice(0, this.xs.length - PLOT_MAX_POINTS);
      this.ys.splice(0, this.ys.length - PLOT_MAX_POINTS);
    }
    this.draw();
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
    const last = this.ys.length ? "  " + formatNumber(this.ys[this.ys.length - 1]) : "";
    g.fillText(this.curve.title + last + (this.stale ? `  (stale: ${this.stale})` : ""), 8, 14);
    const left = 52, right = width - 10, top = 24, bottom = height - 22;
    g.strokeStyle = "#999";
    g.strokeRect(left, top, right - left, bottom - top);
    if (!this.ys.length) {
      g.fillStyle = "#888";
      g.fillText("no data yet", left + 8, top + 18);
      return;
    }
    let [yLow, yHigh] = this.curve.y_range || [Math.min(...this.ys), Math.max(...this.ys)];
    if (yLow === yHigh) { yLow -= 0.5 * (Math.abs(yLow) || 1); yHigh += 0.5 * (Math.abs(yHigh) || 1); }
    const xLow = this.xs[0], xHigh = this.xs[this.xs.length - 1] === xLow ? xLow + 1 : this.xs[this.xs.length - 1];
    const px = (x) => left + ((x - xLow) / (xHigh - xLow)) * (right - left);
    const py = (y) => bottom - ((y - yLow) / (yHigh - yLow)) * (bottom - top);
    g.fillStyle = "#555";
    g.strokeStyle = "#e4e4e4";
    for (const tick of niceTicks(yLow, yHigh, 4)) {
      g.beginPath(); g.moveTo(left, py(tick)); g.lineTo(right, py(tick)); g.stroke();
      g.fillText(formatNumber(tick), 4, py(tick) + 4);
    }
    for (const tick of niceTicks(xLow, xHigh, 4)) {
      const label = formatClock(tick);
      const x = Math.min(Math.max(px(tick) - g.measureText(label).width / 2, 0), width - g.measureText(label).width);
      g.fillText(label, x, bottom + 15);
    }
    g.strokeStyle = "#b36b00";
    g.setLineDash([3, 3]);
    for (const [time, label] of this.marks) {
      if (time < xLow || time > xHigh) continue;
      g.beginPath(); g.moveTo(px(time), top); g.lineTo(px(time), bottom); g.stroke();
      g.fillStyle = "#b36b00";
      g.fillText(label, Math.min(px(time) + 2, right - g.measureText(label).width), top + 11);
    }
    g.setLineDash([]);
    const color = this.stale ? "#aaa" : "#1f6feb";
    const spacings = this.xs.slice(1).map((x, i) => x - this.xs[i]);
    const gap = spacings.length ? GAP_FACTOR * median(spacings) : Infinity;
    g.strokeStyle = color;
    g.fillStyle = color;
    g.lineWidth = 1.5;
    g.beginPath();
    this.xs.forEach((x, i) => {
      const alone = (i === 0 || x - this.xs[i - 1] > gap) && (i === this.xs.length - 1 || this.xs[i + 1] - x > gap);
      if (alone) g.fillRect(px(x) - 2, py(this.ys[i]) - 2, 4, 4);  // a point between gaps has no line to show it
      if (i && x - this.xs[i - 1] <= gap) g.lineTo(px(x), py(this.ys[i]));
      else g.moveTo(px(x), py(this.ys[i]));
    });
    g.stroke();
  }
}
