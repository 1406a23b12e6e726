-- Generated from the prod catalog by `python manage.py export_ddl --env prod`.
CREATE SCHEMA IF NOT EXISTS `arched-bot-269016.market_regime_prod` OPTIONS(location="us-central1", labels=[("environment", "prod")]);
