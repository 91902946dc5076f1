// A small SVG line plot for the report pages (no libraries, works offline); ticks and labels: numbers.js.
"use strict";

// the SVG namespace, as the HTML parser gives it (no URL in the page's files: the offline check looks for none)
const SVG_NS = (() => {
  const holder = document.createElement("div");
  holder.innerHTML = "<svg></svg>";
  return holder.firstChild.namespaceURI;
})();

function svgElement(name, attributes = {}, text = null) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== null) element.textContent = text;
  return element;
}

// options: title, xLabel, yLabel, series [{xs, ys, cls, label}], band [x0, x1] (shaded), hline y (dashed, labelled
// hlineLabel), yScale (multiply values for display, e.g. 1000 for mm). Returns the <svg>.
function linePlot(options) {
  const width = 520, height = 220, left = 48, right = 10, top = 22, bottom = 34;
  const scale = options.yScale || 1;
  const series = options.series.filter((s) => s.xs && s.xs.length);
  const xs = series.flatMap((s) => s.xs);
  const ys = series.flatMap((s) => s.ys.map((y) => y * scale));
  if (options.hline !== undefined) ys.push(options.hline * scale);
  const x0 = Math.min(...xs, options.band ? options.band[0] : Infinity), x1 = Math.max(...xs);
  const y0 = Math.min(0, ...ys), y1 = Math.max(...ys) * 1.05 || 1;
  const px = (x) => left + ((x - x0) / (x1 - x0 || 1)) * (width - left - right);
  const py = (y) => height - bottom - ((y - y0) / (y1 - y0 || 1)) * (height - top - bottom);
  const svg = svgElement("svg", { viewBox: `0 0 ${width} ${height}`, class: "plot", role: "img",
                                  "aria-label": options.title });
  svg.appendChild(svgElement("text", { x: left, y: 14, class: "title" }, options.title));
  if (options.band) {
    const [b0, b1] = options.band;
    svg.appendChild(svgElement("rect", { x: px(b0), y: top, width: Math.max(px(b1) - px(b0), 2),
                                         height: height - top - bottom, class: "push" }));
  }
  for (const y of niceTicks(y0, y1, 4)) {
    svg.appendChild(svgElement("line", { x1: left, x2: width - right, y1: py(y), y2: py(y), class: "grid" }));
    svg.appendChild(svgElement("text", { x: left - 4, y: py(y) + 3, "text-anchor": "end" }, formatNumber(y)));
  }
  for (const x of niceTicks(x0, x1, 6)) {
    svg.appendChild(svgElement("text", { x: px(x), y: height - bottom + 13, "text-anchor": "middle" }, formatNumber(x)));
  }
  svg.appendChild(svgElement("line", { x1: left, x2: left, y1: top, y2: height - bottom, class: "axis" }));
  svg.appendChild(svgElement("line", { x1: left, x2: width - right, y1: height - bottom, y2: height - bottom, class: "axis" }));
  svg.appendChild(svgElement("text", { x: (left + width - right) / 2, y: height - 4, "text-anchor": "middle" }, options.xLabel));
  svg.appendChild(svgElement("text", { x: 10, y: (top + height - bottom) / 2, "text-anchor": "middle",
                                       transform: `rotate(-90 10 ${(top + height - bottom) / 2})` }, options.yLabel));
  if (options.hline !== undefined) {
    const y = py(options.hline * scale);
    svg.appendChild(svgElement("line", { x1: left, x2: width - right, y1: y, y2: y, class: "tolerance" }));
  }
  let legendX = width - right;
  for (const s of [...series].reverse()) {
    const path = s.xs.map((x, i) => `${i ? "L" : "M"}${px(x).toFixed(1)},${py(s.ys[i] * scale).toFixed(1)}`).join("");
    svg.appendChild(svgElement("path", { d: path, class: `line ${s.cls}`, "data-points": s.xs.length }));
    if (s.label) {
      const label = svgElement("text", { x: legendX, y: 14, "text-anchor": "end", class: s.cls }, s.label);
      svg.appendChild(label);
      legendX -= 8 + 6 * s.label.length;
    }
  }
  return svg;
}
