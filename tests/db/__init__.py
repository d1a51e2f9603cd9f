"""Tests of service.db: pool, store, migrations, query plans, optimizer report, maintenance."""
