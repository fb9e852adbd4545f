"""Running the product: backups and restores, the health checks `manage.py doctor` runs,
and the staff operations page that shows the same checks with the queues and counts."""
