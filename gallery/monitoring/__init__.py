"""Watching the product run: Prometheus metrics, health and readiness probes, request ids
and quiet, structured logs. Every process (web server, Celery worker) records its own
metrics; the web process also reports the catalog's and the broker's state at scrape time."""
