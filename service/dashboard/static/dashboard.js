// Draws the page's Plotly figures, then loads the credit heatmap (computed on demand).
(function () {
  const figures = JSON.parse(document.getElementById("figures").textContent);
  for (const [id, figure] of Object.entries(figures)) {
    Plotly.newPlot(id, figure.data, figure.layout, { responsive: true, displaylogo: false });
  }
  const credits = document.getElementById("credits");
  if (credits) {
    fetch(credits.dataset.src)
      .then((r) => r.text())
      .then((html) => { credits.innerHTML = html; })
      .catch((e) => { credits.textContent = "could not load the credits: " + e; });
  }
})();
