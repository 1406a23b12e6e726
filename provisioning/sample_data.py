"""Deterministic synthetic market-regime data for every catalog feature, as Parquet in the story's layout.

Layout: `{root}/{ASSET}/{yyyy}/{mm}/{dd}/{HH}/{component}.parquet` (snappy), one file per component per
hour directory. The date and hour in the path are the exchange's (IST), as in the story's example
`NIFTY/2025/08/10/14/`; `ts_minute` inside the files is a UTC timestamp, so `DATE(ts_minute)` is the same
date for every trading minute (09:15-15:29 IST is 03:45-09:59 UTC).

What the data looks like, so tests and benchmarks can rely on it:
- symbols NIFTY, BANKNIFTY, FINNIFTY, MIDCPNIFTY; one row per minute 09:15-15:29 IST (375 minutes) on
  trading days (weekdays not in `HOLIDAYS`) for each of the next `expiries` weekly expiries of the symbol;
- weekly expiries fall on a fixed weekday per symbol (NIFTY Thursday, BANKNIFTY Wednesday, FINNIFTY Tuesday,
  MIDCPNIFTY Monday, the exchange schedule before the 2024 weekly-expiry rationalisation), moved to the
  previous trading day when that day is a holiday; `dte` is calendar days from the trading day to the expiry
  (0 on expiry day);
- each component misses `missing_share` of its (symbol, minute) rows, all dte at once, independently of the
  other components, as a real feed drops minutes;
- values follow the feature's name: prices and premiums positive (a random walk per symbol, day and dte),
  probabilities, ranks and scores in [0, 1], correlations in [-1, 1], counts non-negative ints, directions
  -1/0/1, class labels from the feature's label set; daily aggregates (a TTL over two days: the 30d
  features) are constant within a (symbol, day).
Every value is a function of (seed, component, column) alone, so adding a feature changes no other
feature's values. The same arguments give byte-identical files.
"""

import datetime as dt
import zlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

IST = ZoneInfo("Asia/Kolkata")
SYMBOLS: tuple[str, ...] = ("NIFTY", "BANKNIFTY", "FINNIFTY", "MIDCPNIFTY")
SESSION_OPEN = dt.time(9, 15)
SESSION_MINUTES = 375  # 09:15 .. 15:29 inclusive
# Monday = 0. Weekly expiry weekday per symbol (NSE schedule before November 2024).
EXPIRY_WEEKDAY: dict[str, int] = {"NIFTY": 3, "BANKNIFTY": 2, "FINNIFTY": 1, "MIDCPNIFTY": 0}
UNDERLYING_LEVEL: dict[str, float] = {
    "NIFTY": 24500.0,
    "BANKNIFTY": 52000.0,
    "FINNIFTY": 23500.0,
    "MIDCPNIFTY": 12500.0,
}
# A small fixed list of exchange holidays (NSE 2025 and the fixed-date ones of 2026); not authoritative.
HOLIDAYS: frozenset[dt.date] = frozenset(
    dt.date.fromisoformat(day)
    for day in (
        "2025-02-26",
        "2025-03-14",
        "2025-03-31",
        "2025-04-10",
        "2025-04-14",
        "2025-04-18",
        "2025-05-01",
        "2025-08-15",
        "2025-08-27",
        "2025-10-02",
        "2025-10-21",
        "2025-10-22",
        "2025-11-05",
        "2025-12-25",
        "2026-01-26",
        "2026-05-01",
        "2026-10-02",
        "2026-12-25",
    )
)
# Minute-level features live 48 h, daily aggregates 30 days: a TTL beyond two days marks a daily aggregate.
DAILY_TTL_SECONDS = 2 * 86_400
KEY_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("ts_minute", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("dte", pa.int64(), nullable=False),
    ]
)
NUMERIC_TYPE = pa.decimal128(38, 9)
ARROW_TYPES: dict[str, Any] = {
    "float64": pa.float64(),
    "numeric": NUMERIC_TYPE,
    "int64": pa.int64(),
    "bool": pa.bool_(),
    "string": pa.string(),
}

_REGIMES = (
    "trending_bullish",
    "trending_bearish",
    "range_bound_low_vol",
    "range_bound_high_vol",
    "breakout_bullish",
    "breakout_bearish",
    "volatile_expansion",
    "mean_reverting",
)
_OI_PATTERNS = ("long_buildup", "short_buildup", "long_unwinding", "short_covering")
_SR_REGIMES = ("range_bound", "breaking_out", "breaking_down")
_CPR_POSITIONS = ("above", "inside", "below")
# Class labels of the string features (from their descriptions); any other string feature gets LEVEL_LABELS.
LABELS: dict[str, tuple[str, ...]] = {
    "sentiment_class": (
        "strong_bullish",
        "bullish",
        "mild_bullish",
        "neutral",
        "mild_bearish",
        "bearish",
        "strong_bearish",
    ),
    "oi_price_pattern": _OI_PATTERNS,
    "call_oi_price_pattern": _OI_PATTERNS,
    "put_oi_price_pattern": _OI_PATTERNS,
    "iv_percentile_regime": ("low", "normal", "high", "extreme"),
    "skew_regime": ("put_skew", "flat", "call_skew"),
    "cpr_type": ("narrow", "normal", "wide"),
    "price_cpr_position": _CPR_POSITIONS,
    "straddle_cpr_position": _CPR_POSITIONS,
    "atr_regime": ("low", "normal", "high"),
    "ema_trend_regime": ("uptrend", "downtrend", "sideways"),
    "correlation_regime": ("coupled", "decoupling", "decoupled", "recoupling"),
    "first_hour_straddle_pattern": ("early_decay", "early_expansion", "v_shape", "flat"),
    "underlying_sr_regime": _SR_REGIMES,
    "straddle_sr_regime": _SR_REGIMES,
    "predicted_regime": _REGIMES,
    "prev_day_dominant_regime": _REGIMES,
    "most_likely_next_regime": _REGIMES,
}
LEVEL_LABELS = ("low", "normal", "high")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class FeatureColumn:
    column: str
    dtype: str  # catalog dtype: float64, numeric (written as DECIMAL(38, 9), BigQuery NUMERIC), int64, bool, string
    ttl_seconds: int


@dataclass(frozen=True)
class ComponentColumns:
    component: str
    columns: tuple[FeatureColumn, ...]


ComponentsInput = Iterable[ComponentColumns | tuple[str, Sequence[FeatureColumn | tuple[str, str, int]]]]


@dataclass(frozen=True)
class GenerationSummary:
    root: Path
    days: tuple[dt.date, ...]
    files: int
    rows: int  # over all components' files
    bytes: int
    rows_per_component: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"wrote {self.files} files, {self.rows} rows, {self.bytes / 1e6:.1f} MB to {self.root} "
            f"({self.days[0]} .. {self.days[-1]}, {len(self.days)} trading days)"
        )


def components_from_specs(documents: Iterable[Mapping[str, Any]]) -> list[ComponentColumns]:
    """Spec documents (`catalog.specs.load_spec_files`) -> the columns to generate; version 1 column names."""
    from catalog import rules

    components = []
    for document in documents:
        columns = []
        for feature in document["features"]:
            ttl = rules.ttl_parse(str(feature["ttl"]))
            if ttl is None:
                raise ValueError(f"{document['component']}.{feature['name']}: bad ttl {feature['ttl']!r}")
            columns.append(FeatureColumn(rules.column_name(feature["name"], 1), feature["dtype"], ttl))
        components.append(ComponentColumns(document["component"], tuple(columns)))
    return components


def components_from_spec_dir(directory: Path | None = None) -> list[ComponentColumns]:
    """The columns of every component in the spec files (default: settings.FCC_SPECS_DIR)."""
    from catalog.specs import load_spec_files

    if directory is None:
        from django.conf import settings

        directory = Path(settings.FCC_SPECS_DIR)
    return components_from_specs(load_spec_files(directory))


def components_from_catalog(environment: Any) -> list[ComponentColumns]:
    """The current column of every feature of an environment (`catalog.models.Environment`), active or not:
    deprecated features keep their columns in the offline tables."""
    from catalog.models import Feature

    by_component: dict[str, list[FeatureColumn]] = {}
    features = Feature.objects.filter(environment=environment).select_related("component").order_by("id")
    for feature in features:
        by_component.setdefault(feature.component.key, []).append(
            FeatureColumn(feature.column_name, feature.dtype, feature.ttl_seconds)
        )
    return [ComponentColumns(key, tuple(columns)) for key, columns in sorted(by_component.items())]


def _normalise(components: ComponentsInput) -> list[ComponentColumns]:
    result = []
    for item in components:
        if isinstance(item, ComponentColumns):
            result.append(item)
            continue
        component, columns = item
        result.append(
            ComponentColumns(
                component, tuple(c if isinstance(c, FeatureColumn) else FeatureColumn(*c) for c in columns)
            )
        )
    for entry in result:
        for column in entry.columns:
            if column.dtype not in ARROW_TYPES:
                raise ValueError(f"{entry.component}.{column.column}: dtype {column.dtype!r} is not generated")
    return result


def is_trading_day(day: dt.date, holidays: Collection[dt.date] = HOLIDAYS) -> bool:
    return day.weekday() < 5 and day not in holidays


def trading_days(start: dt.date, count: int, holidays: Collection[dt.date] = HOLIDAYS) -> list[dt.date]:
    """The first `count` trading days on or after `start`."""
    days: list[dt.date] = []
    day = start
    while len(days) < count:
        if is_trading_day(day, holidays):
            days.append(day)
        day += dt.timedelta(days=1)
    return days


def session_close(day: dt.date) -> dt.datetime:
    """When a trading day's last minute (15:29 IST) has ended."""
    return dt.datetime.combine(day, SESSION_OPEN, tzinfo=IST) + dt.timedelta(minutes=SESSION_MINUTES)


def recent_start(count: int, now: dt.datetime, holidays: Collection[dt.date] = HOLIDAYS) -> dt.date:
    """The first of the last `count` trading sessions closed at `now` (an aware moment; today's counts once
    15:30 IST has passed): the newest sample the online TTLs can still cover."""
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    day = now.astimezone(IST).date()
    if not (is_trading_day(day, holidays) and now >= session_close(day)):
        day -= dt.timedelta(days=1)
    found = 0
    while True:
        if is_trading_day(day, holidays):
            found += 1
            if found == count:
                return day
        day -= dt.timedelta(days=1)


def weekly_expiries(symbol: str, day: dt.date, count: int, holidays: Collection[dt.date] = HOLIDAYS) -> list[dt.date]:
    """The next `count` weekly expiries of `symbol` on or after `day`, each moved to the previous trading day
    when it falls on a holiday."""
    weekday = EXPIRY_WEEKDAY.get(symbol, 3)
    expiry = day + dt.timedelta(days=(weekday - day.weekday()) % 7)
    result: list[dt.date] = []
    while len(result) < count:
        actual = expiry
        while not is_trading_day(actual, holidays):
            actual -= dt.timedelta(days=1)
        if actual >= day:
            result.append(actual)
        expiry += dt.timedelta(days=7)
    return result


def _seed(seed: int, *names: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(name.encode()) for name in names)])


def _tokens(column: str) -> set[str]:
    return set(column.lower().split("_"))


def _float_kind(column: str) -> str:
    tokens = _tokens(column)
    name = column.lower()
    if tokens & {"prob", "probability", "confidence", "rank", "score", "strength", "entropy", "share", "weight"}:
        return "unit"
    if tokens & {"percentile", "rsi"}:
        return "percent"
    if "corr" in tokens or "correlation" in tokens or "ic" in tokens:
        return "correlation"
    if tokens & {"zscore", "change", "slope", "pct", "divergence", "diff", "net", "momentum", "macd", "return"}:
        return "signed"
    if tokens & {"ratio", "pcr"}:
        return "ratio"
    if "iv" in tokens or name.startswith("iv") or "vol" in tokens:
        return "iv"
    if tokens & {"volume", "oi"}:
        return "size"
    if tokens & {"minutes", "duration", "persistence"}:
        return "minutes"
    if tokens & {
        "premium",
        "price",
        "level",
        "vwap",
        "ema",
        "sma",
        "support",
        "resistance",
        "pivot",
        "close",
        "open",
        "high",
        "low",
        "atr",
        "range",
        "straddle",
        "underlying",
        "std",
    }:
        return "price"
    return "signed"


def _int_kind(column: str) -> str:
    tokens = _tokens(column)
    if tokens & {"direction", "cross", "bias"}:
        return "direction"
    if "id" in tokens:
        return "id"
    if tokens & {"minutes", "duration", "persistence"}:
        return "minutes"
    if tokens & {"oi"}:
        return "oi"
    if tokens & {"volume"}:
        return "volume"
    return "count"


@dataclass(frozen=True)
class _Grid:
    """The full minute grid of one generation, rows ordered by (symbol, day, minute, expiry slot)."""

    n_symbols: int
    n_days: int
    n_expiries: int
    walk: FloatArray  # shape (symbols, days, minutes, expiries): shared log-price path
    dte: IntArray  # shape (symbols, days, expiries)
    ts_us: IntArray  # shape (days, minutes): UTC microseconds

    @property
    def rows(self) -> int:
        return self.n_symbols * self.n_days * SESSION_MINUTES * self.n_expiries

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.n_symbols, self.n_days, SESSION_MINUTES, self.n_expiries)


def _daily(values: npt.NDArray[Any], grid: _Grid) -> npt.NDArray[Any]:
    """One value per (symbol, day), repeated over the day's minutes and expiries."""
    return np.repeat(values, SESSION_MINUTES * grid.n_expiries)


def _float_values(column: str, daily: bool, rng: np.random.Generator, grid: _Grid, levels: FloatArray) -> FloatArray:
    kind = _float_kind(column)
    n = grid.n_symbols * grid.n_days if daily else grid.rows
    values: npt.NDArray[Any]
    if kind == "unit":
        values = rng.beta(2.0, 2.0, n)
    elif kind == "percent":
        values = 100.0 * rng.beta(2.0, 2.0, n)
    elif kind == "correlation":
        values = np.tanh(rng.normal(0.3, 0.6, n))
    elif kind == "ratio":
        values = np.exp(rng.normal(0.0, 0.15, n))
    elif kind == "iv":
        values = 0.08 + 0.3 * rng.beta(2.0, 5.0, n)
    elif kind == "size":
        values = np.round(np.exp(rng.normal(11.0, 1.0, n)), 0)
    elif kind == "minutes":
        values = np.floor(rng.uniform(0.0, SESSION_MINUTES, n))
    elif kind == "price":
        # Levels of the underlying move with the symbol's path; premiums and ranges are a small share of it.
        tokens = _tokens(column)
        share = 1.0 if tokens & {"underlying", "pivot", "support", "resistance", "close", "open"} else 0.01
        scale = share * rng.uniform(0.9, 1.1)
        if daily:
            values = levels * scale * np.exp(rng.normal(0.0, 0.002, n))
        else:
            noise = rng.normal(0.0, 0.0005, n)
            values = np.repeat(levels, SESSION_MINUTES * grid.n_expiries) * scale * np.exp(grid.walk.ravel() + noise)
    else:
        values = rng.normal(0.0, 1.0, n)
    return np.asarray(values, dtype=np.float64)


def _int_values(column: str, n: int, rng: np.random.Generator) -> IntArray:
    kind = _int_kind(column)
    if kind == "direction":
        return rng.integers(-1, 2, n, dtype=np.int64)
    if kind == "id":
        return rng.integers(0, len(_REGIMES), n, dtype=np.int64)
    if kind == "minutes":
        return rng.integers(0, SESSION_MINUTES, n, dtype=np.int64)
    if kind == "oi":
        return np.round(np.exp(rng.normal(14.0, 0.8, n))).astype(np.int64)
    if kind == "volume":
        return np.round(np.exp(rng.normal(9.0, 1.0, n))).astype(np.int64)
    return rng.poisson(3.0, n).astype(np.int64)


def _feature_array(
    component: str, feature: FeatureColumn, seed: int, grid: _Grid, levels: FloatArray, null_share: float
) -> Any:
    rng = _seed(seed, component, feature.column)
    daily = feature.ttl_seconds > DAILY_TTL_SECONDS
    n = grid.n_symbols * grid.n_days if daily else grid.rows
    values: npt.NDArray[Any]
    if feature.dtype in ("float64", "numeric"):
        values = _float_values(feature.column, daily, rng, grid, levels)
        arrow_type = pa.float64()
    elif feature.dtype == "int64":
        values = _int_values(feature.column, n, rng)
        arrow_type = pa.int64()
    elif feature.dtype == "bool":
        values = rng.random(n) < 0.2
        arrow_type = pa.bool_()
    else:
        labels = LABELS.get(feature.column.split("__v")[0], LEVEL_LABELS)
        values = rng.integers(0, len(labels), n, dtype=np.int32)
        arrow_type = pa.string()
    if daily:
        values = _daily(values, grid)
    mask = rng.random(grid.rows) < null_share if null_share > 0 else None
    if arrow_type == pa.string():
        indices = pa.array(values, type=pa.int32(), mask=mask)
        return pa.DictionaryArray.from_arrays(indices, pa.array(labels, pa.string())).cast(pa.string())
    if feature.dtype == "numeric":
        return pa.array(np.round(values, 6), type=arrow_type, mask=mask).cast(NUMERIC_TYPE)
    return pa.array(values, type=arrow_type, mask=mask)


def _grid(
    symbols: Sequence[str], days: Sequence[dt.date], expiries: int, seed: int, holidays: Collection[dt.date]
) -> _Grid:
    n_symbols, n_days = len(symbols), len(days)
    dte = np.empty((n_symbols, n_days, expiries), dtype=np.int64)
    for s, symbol in enumerate(symbols):
        for d, day in enumerate(days):
            dte[s, d] = [(expiry - day).days for expiry in weekly_expiries(symbol, day, expiries, holidays)]
    opens = np.array(
        [dt.datetime.combine(day, SESSION_OPEN, tzinfo=IST).timestamp() * 1_000_000 for day in days], dtype=np.int64
    )
    ts_us = opens[:, None] + np.arange(SESSION_MINUTES, dtype=np.int64)[None, :] * 60_000_000
    steps = _seed(seed, "walk").normal(0.0, 0.0007, (n_symbols, n_days, SESSION_MINUTES, expiries))
    # Expiries of one symbol share most of the path: the common part is the underlying's move.
    steps[..., 1:] = 0.8 * steps[..., :1] + 0.2 * steps[..., 1:]
    walk = np.cumsum(steps, axis=2)
    return _Grid(n_symbols, n_days, expiries, walk, dte, ts_us)


def _key_columns(symbols: Sequence[str], grid: _Grid) -> tuple[Any, Any, Any]:
    shape = grid.shape
    symbol_index = np.broadcast_to(np.arange(grid.n_symbols, dtype=np.int32)[:, None, None, None], shape).ravel()
    symbol = pa.DictionaryArray.from_arrays(pa.array(symbol_index), pa.array(list(symbols), pa.string()))
    ts = np.broadcast_to(grid.ts_us[None, :, :, None], shape).ravel()
    dte = np.broadcast_to(grid.dte[:, :, None, :], shape).ravel()
    return (
        symbol.cast(pa.string()),
        pa.array(ts, type=pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        pa.array(dte, type=pa.int64()),
    )


def _hour_slices(grid: _Grid, keep: npt.NDArray[np.bool_]) -> list[tuple[int, int, int, int]]:
    """(symbol, day, IST hour, end offset) of each file in a component's kept rows, in row order."""
    minute = np.arange(SESSION_MINUTES)
    hour_of_minute = (SESSION_OPEN.hour * 60 + SESSION_OPEN.minute + minute) // 60
    hour = np.broadcast_to(hour_of_minute[None, None, :, None], grid.shape).ravel()[keep]
    day = np.broadcast_to(np.arange(grid.n_days)[None, :, None, None], grid.shape).ravel()[keep]
    symbol = np.broadcast_to(np.arange(grid.n_symbols)[:, None, None, None], grid.shape).ravel()[keep]
    file_id = (symbol * grid.n_days + day) * 24 + hour
    if file_id.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, file_id[1:] != file_id[:-1]])
    ends = np.r_[starts[1:], file_id.size]
    return [(int(symbol[a]), int(day[a]), int(hour[a]), int(b)) for a, b in zip(starts, ends, strict=True)]


def generate_sample_data(
    root: Path | str,
    *,
    components: ComponentsInput,
    start: dt.date,
    days: int = 5,
    seed: int = 20250810,
    symbols: Sequence[str] = SYMBOLS,
    expiries: int = 3,
    missing_share: float = 0.03,
    null_share: float = 0.0,
    holidays: Collection[dt.date] = HOLIDAYS,
    workers: int = 2,
) -> GenerationSummary:
    """Writes `days` trading days from `start` (inclusive) under `root`; returns what it wrote.

    `components`: ComponentColumns, or (component, [(column, dtype, ttl_seconds)]) pairs.
    `null_share`: the share of null values in every feature column (0 by default: feeds fill their columns).
    """
    root = Path(root)
    entries = _normalise(components)
    day_list = trading_days(start, days, holidays)
    grid = _grid(symbols, day_list, expiries, seed, holidays)
    levels = np.repeat(np.array([UNDERLYING_LEVEL.get(s, 10000.0) for s in symbols]), grid.n_days) * np.exp(
        _seed(seed, "levels").normal(0.0, 0.01, grid.n_symbols * grid.n_days)
    )
    symbol_col, ts_col, dte_col = _key_columns(symbols, grid)
    files = 0
    total_rows = 0
    total_bytes = 0
    rows_per_component: dict[str, int] = {}

    def write(item: tuple[Path, Any, list[str]]) -> int:
        path, part, dictionary_columns = item
        path.parent.mkdir(parents=True, exist_ok=True)
        # Hour files are small and wide, so per-column overhead dominates: statistics only on the keys (what
        # readers prune on), dictionaries only for labels, and no serialized Arrow schema (the Parquet types
        # read back as the same Arrow types). Each halves the time to write and to read a file.
        pq.write_table(
            part,
            path,
            compression="snappy",
            use_dictionary=dictionary_columns,
            write_statistics=list(KEY_SCHEMA.names),
            store_schema=False,
        )
        return path.stat().st_size

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for entry in entries:
            # The same (symbol, minute) is missing for all dte of the component, independently per component.
            missing = _seed(seed, "missing", entry.component).random((grid.n_symbols, grid.n_days, SESSION_MINUTES))
            keep = np.broadcast_to((missing >= missing_share)[..., None], grid.shape).ravel()
            arrays = [symbol_col, ts_col, dte_col]
            fields = list(KEY_SCHEMA)
            for feature in entry.columns:
                array = _feature_array(entry.component, feature, seed, grid, levels, null_share)
                arrays.append(array)
                fields.append(pa.field(feature.column, array.type))
            table = pa.Table.from_arrays(arrays, schema=pa.schema(fields)).filter(pa.array(keep))
            dictionary_columns = ["symbol", *(f.column for f in entry.columns if f.dtype == "string")]
            rows_per_component[entry.component] = table.num_rows
            total_rows += table.num_rows
            writes: list[tuple[Path, Any, list[str]]] = []
            offset = 0
            for s, d, hour, end in _hour_slices(grid, keep):
                day = day_list[d]
                directory = root / symbols[s] / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}" / f"{hour:02d}"
                part = table.slice(offset, end - offset)
                writes.append((directory / f"{entry.component}.parquet", part, dictionary_columns))
                offset = end
            for size in pool.map(write, writes):
                files += 1
                total_bytes += size
    return GenerationSummary(root, tuple(day_list), files, total_rows, total_bytes, rows_per_component)
