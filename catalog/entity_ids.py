"""The `instrument_minute` entity id: `${symbol}_${yyyymmddHHMM}_${dte}`, the minute in India Standard Time.

IST because the market runs 09:15-15:30 IST and the Parquet layout's hour folders are IST hours; the offline
tables keep `ts_minute` in UTC. `NIFTY_202611270915_3` is NIFTY at 09:15 IST (03:45 UTC) with 3 days to expiry.
"""

import datetime as dt
import re
from zoneinfo import ZoneInfo

IST = ZoneInfo("Asia/Kolkata")
ENTITY_ID = re.compile(r"^(?P<symbol>[A-Z][A-Z0-9]{0,31})_(?P<minute>\d{12})_(?P<dte>\d{1,4})$")
# The same id in BigQuery, for views and Vertex AI feature views built from the offline tables.
BIGQUERY_ENTITY_ID = (
    "CONCAT(symbol, '_', FORMAT_TIMESTAMP('%Y%m%d%H%M', ts_minute, 'Asia/Kolkata'), '_', CAST(dte AS STRING))"
)


def entity_id(symbol: str, ts_minute: dt.datetime, dte: int) -> str:
    if ts_minute.tzinfo is None:
        raise ValueError("ts_minute must be timezone-aware")
    return f"{symbol}_{ts_minute.astimezone(IST):%Y%m%d%H%M}_{dte}"


def entity_parts(value: str) -> tuple[str, dt.datetime, int]:
    """`NIFTY_202611270915_3` -> ("NIFTY", 2026-11-27 03:45 UTC, 3). ValueError when it is not an entity id."""
    match = ENTITY_ID.match(value)
    if not match:
        raise ValueError(f"{value[:80]!r} is not an instrument_minute id (SYMBOL_yyyymmddHHMM_dte)")
    minute = dt.datetime.strptime(match["minute"], "%Y%m%d%H%M").replace(tzinfo=IST)
    return match["symbol"], minute.astimezone(dt.UTC), int(match["dte"])
