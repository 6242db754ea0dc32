/* chemgap report: draws the figures (plotly.js) and the structure viewer (3Dmol.js) from the
   JSON block #report-data. window.chemgapReport says what was drawn (read by the tests). */
(function () {
  "use strict";
  var state = { plots: 0, expected: 0, viewer: false, done: false, errors: [] };
  window.chemgapReport = state;
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var config = {
    displaylogo: false,
    responsive: true,
    modeBarButtonsToRemove: ["lasso2d", "select2d", "toImage"]
  };

  function drawPlots() {
    var divs = document.querySelectorAll("div.plot[data-figure]");
    var pending = [];
    state.expected = divs.length;
    divs.forEach(function (div) {
      var fig = data.figures[div.getAttribute("data-figure")];
      if (!fig) {
        state.errors.push("no figure " + div.getAttribute("data-figure"));
        return;
      }
      pending.push(Plotly.newPlot(div, fig.data, fig.layout, config).then(function () {
        state.plots += 1;
      }));
    });
    return Promise.all(pending);
  }

  function atomText(view, atom) {
    var text = "atom " + atom.serial + " " + atom.elem;
    if (view.errors) {
      text += " · |ΔF| " + Math.round(1000 * view.errors[atom.serial]) + " meV/Å";
    }
    if (view.highlight.indexOf(atom.serial) >= 0) {
      text += view.region ? " · in " + view.region : " · marked";
    }
    return text;
  }

  function showView(viewer, index) {
    var view = data.views[index];
    viewer.removeAllLabels();
    viewer.clear();
    var model = viewer.addModel(view.xyz, "xyz");
    viewer.setStyle({}, { sphere: { scale: 0.28, colorscheme: "Jmol" }, stick: { radius: 0.08 } });
    if (view.highlight.length) {
      viewer.setStyle({ serial: view.highlight }, { sphere: { scale: 0.42, color: "#d62728" } });
    }
    if (model.getCrystData && model.getCrystData()) {
      viewer.addUnitCell(model, { box: { color: "#888888" } });
    }
    var label = null;
    viewer.setHoverable({}, true, function (atom) {
      if (label === null) {
        label = viewer.addLabel(atomText(view, atom), {
          position: atom, backgroundColor: "#333333", backgroundOpacity: 0.8, fontSize: 12
        });
      }
    }, function () {
      if (label !== null) { viewer.removeLabel(label); label = null; }
    });
    viewer.zoomTo();
    viewer.zoom(1.4);
    viewer.render();
    document.getElementById("viewer-caption").textContent = view.rule;
  }

  function initViewer() {
    var el = document.getElementById("viewer");
    if (!el || !data.views.length) { return; }
    var viewer = $3Dmol.createViewer(el, { backgroundColor: "white" });
    if (!viewer) {
      el.textContent = "3D viewer unavailable: this browser has no WebGL.";
      return;
    }
    var select = document.getElementById("viewer-select");
    select.addEventListener("change", function () { showView(viewer, Number(select.value)); });
    showView(viewer, 0);
    state.viewer = true;
    el.setAttribute("data-ready", "true");
  }

  try { initViewer(); } catch (err) {
    state.errors.push("viewer: " + err);
    console.error("chemgap report viewer:", err);
  }
  drawPlots().then(function () {
    state.done = true;
    document.body.setAttribute("data-ready", "true");
  }, function (err) {
    state.errors.push("plots: " + err);
    state.done = true;
    console.error("chemgap report plots:", err);
  });
}());
