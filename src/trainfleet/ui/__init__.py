"""`trainfleet ui`: a live dashboard of one fleet and its jobs in the browser.

`views` turns what the fleet answered into what the pages show (pure); `watch` is the one
SSH session that asks the fleet; `server` serves the pages and the JSON behind them on
127.0.0.1, behind a token; `static/` holds the page, its script and uPlot (fetched from
the npm registry by scripts/fetch-uplot.sh and shipped inside the package: nothing is
loaded from a CDN, the controller may be offline)."""
