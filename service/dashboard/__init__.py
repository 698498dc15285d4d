"""Server-rendered pages of studies and trials (Jinja2 templates, Plotly served from the
Python package: nothing is fetched from outside). `routes.router` is mounted at `/`."""
