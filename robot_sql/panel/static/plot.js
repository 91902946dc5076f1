// A small line plot on a <canvas>: the panel's only charting (no libraries, works offline).
"use strict";

const PLOT_MAX_POINTS = 5000;

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

// x is wall-clock time (every process logs against it); `window` > 1 plots the running mean
// of the last `window` values (e.g. 0/1 episode successes -> success rate)
class LinePlot {
  constructor(canvas, title, window = 1) {
    this.canvas = canvas;
    this.title = title;
    this.window = window;
    this.raw = [];
    this.xs = [];
    this.ys = [];
  }

  get length() {
    return this.xs.length;
  }

  // points: [[time, step, value], ...] in time order
  extend(points) {
    for (const [time, , value] of points) {
      this.raw.push(value);
      if (this.raw.length > this.window) this.raw.shift();
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
    g.fillStyle = "#222";
    const last = this.ys.length ? "  " + formatNumber(this.ys[this.ys.length - 1]) : "";
    g.fillText(this.title + last, 8, 14);
    const left = 52, right = width - 10, top = 24, bottom = height - 22;
    g.strokeStyle = "#999";
    g.strokeRect(left, top, right - left, bottom - top);
    if (!this.ys.length) {
      g.fillStyle = "#888";
      g.fillText("no data yet", left + 8, top + 18);
      return;
    }
    let yLow = Math.min(...this.ys), yHigh = Math.max(...this.ys);
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
    g.strokeStyle = "#1f6feb";
    g.lineWidth = 1.5;
    g.beginPath();
    this.xs.forEach((x, i) => (i ? g.lineTo(px(x), py(this.ys[i])) : g.moveTo(px(x), py(this.ys[i]))));
    g.stroke();
    if (this.xs.length === 1) {
      g.fillStyle = "#1f6feb";
      g.fillRect(px(this.xs[0]) - 2, py(this.ys[0]) - 2, 4, 4);
    }
  }
}
