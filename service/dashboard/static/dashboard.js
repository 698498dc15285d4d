// Draws the page's Plotly figures.
(function () {
  const figures = JSON.parse(document.getElementById("figures").textContent);
  for (const [id, figure] of Object.entries(figures)) {
    Plotly.newPlot(id, figure.data, figure.layout, { responsive: true, displaylogo: false });
  }
})();
