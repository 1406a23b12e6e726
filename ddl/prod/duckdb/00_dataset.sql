-- Generated from the prod catalog by `python manage.py export_ddl --env prod`.
CREATE SCHEMA IF NOT EXISTS "market_regime_prod";
