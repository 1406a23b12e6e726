/* The lineage graph: cytoscape.js over server-computed elements (preset positions: layers left to right). */
(function () {
  "use strict";
  var container = document.getElementById("lineage-graph");
  var dataNode = document.getElementById("lineage-data");
  if (!container || !dataNode || typeof cytoscape === "undefined") { return; }
  var graph = JSON.parse(dataNode.textContent);
  var colors = { source: "#7a5195", component: "#ef5675", feature: "#0b5cad", column: "#2f9e8f",
                 table: "#155d52", view: "#c58a00", online: "#b3261e" };
  var cy = cytoscape({
    container: container,
    elements: graph.elements,
    layout: { name: "preset", fit: true, padding: 24 },
    minZoom: 0.05,
    maxZoom: 3,
    style: [
      { selector: "node", style: {
          "background-color": function (n) { return colors[n.data("kind")] || "#666"; },
          "label": "data(label)", "font-size": 11, "color": "#1b1f24",
          "text-valign": "center", "text-halign": "right", "text-margin-x": 6,
          "width": 14, "height": 14, "text-background-color": "#fff", "text-background-opacity": 0.8,
          "text-background-padding": 1 } },
      { selector: "node[kind = 'component'], node[kind = 'table'], node[kind = 'view'], node[kind = 'online']",
        style: { "width": 24, "height": 24, "shape": "round-rectangle", "font-weight": "bold" } },
      { selector: "edge", style: { "width": 1.2, "line-color": "#b6bec9", "target-arrow-color": "#b6bec9",
          "target-arrow-shape": "triangle", "arrow-scale": 0.7, "curve-style": "bezier" } },
      { selector: ".faded", style: { "opacity": 0.15 } },
      { selector: "node.upstream", style: { "border-width": 3, "border-color": "#3b82f6" } },
      { selector: "edge.upstream", style: { "line-color": "#3b82f6", "target-arrow-color": "#3b82f6", "width": 2.2 } },
      { selector: "node.downstream", style: { "border-width": 3, "border-color": "#16a34a" } },
      { selector: "edge.downstream", style: { "line-color": "#16a34a", "target-arrow-color": "#16a34a", "width": 2.2 } },
      { selector: "node.selected-node", style: { "border-width": 4, "border-color": "#f0a500", "width": 22, "height": 22 } }
    ]
  });
  // A whole component is tall (one row per feature): fitting it all would make labels unreadable, so fit the
  // width instead and start at the top; drag to pan, scroll to zoom.
  if (cy.zoom() < 0.5) {
    var box = cy.elements().boundingBox();
    var zoom = Math.min(1, (container.clientWidth - 48) / Math.max(box.w, 1));
    cy.zoom(zoom);
    cy.pan({ x: 24 - box.x1 * zoom, y: 24 - box.y1 * zoom });
  }
  var info = document.getElementById("lineage-info");
  var picker = document.getElementById("node-pick");

  function clear() {
    cy.elements().removeClass("faded upstream downstream selected-node");
    if (info) { info.textContent = "No node selected."; }
  }
  function highlight(node) {
    if (!node || node.empty()) { return; }
    var up = node.predecessors();
    var down = node.successors();
    cy.elements().addClass("faded").removeClass("upstream downstream selected-node");
    node.removeClass("faded").addClass("selected-node");
    up.removeClass("faded").addClass("upstream");
    down.removeClass("faded").addClass("downstream");
    if (info) {
      info.textContent = node.data("kind") + " " + node.data("label") + (node.data("title") ? " (" + node.data("title") + ")" : "") +
        ": " + up.nodes().length + " upstream, " + down.nodes().length + " downstream.";
    }
    if (picker) { picker.value = node.id(); }
    if (!cy.extent().w || !node.renderedPosition() || node.renderedPosition().y < 0 ||
        node.renderedPosition().y > container.clientHeight) {
      cy.center(node);
    }
  }
  cy.on("tap", "node", function (event) { highlight(event.target); });
  cy.on("tap", function (event) { if (event.target === cy) { clear(); } });
  cy.on("dbltap", "node", function (event) {
    var href = event.target.data("href");
    if (href) { window.location.href = href; }
  });
  if (picker) {
    picker.addEventListener("change", function () {
      if (picker.value) { highlight(cy.getElementById(picker.value)); } else { clear(); }
    });
  }
  var clearButton = document.getElementById("node-clear");
  if (clearButton) { clearButton.addEventListener("click", function () { if (picker) { picker.value = ""; } clear(); }); }
  if (graph.focus) { highlight(cy.getElementById(graph.focus)); }
  window.fccLineage = cy;
})();
