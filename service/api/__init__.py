"""The REST API under /api/v1: `create_app(settings)` in `service.app`."""
