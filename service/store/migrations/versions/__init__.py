"""One file per revision, applied in order by `service.store.db.migrate`."""
