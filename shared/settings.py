"""Settings from `SCALPER_*` environment variables and a `.env` file (names fixed by architecture.md)."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCALPER_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default=f"sqlite+aiosqlite:///{REPO_ROOT / 'var' / 'scalper.db'}",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///PATH or postgresql+asyncpg://...",
    )
    sqlite_synchronous: Literal["normal", "full"] = Field(
        default="normal",
        description="SQLite only: `normal` does not wait for the disk at each commit (safe if the process dies; a power "
        "cut may lose the last transactions, as the in-memory bus loses its messages); `full` syncs every commit",
    )
    bus_url: str = Field(default="memory://", description="memory:// or amqp://user:pass@host:port/vhost")
    feed: str = Field(default="synthetic", description="synthetic | replay:PATH | mt5")
    broker: Literal["paper", "mt5"] = "paper"
    scan_mode: Literal["interval", "aligned"] = "interval"
    scan_interval_s: float = Field(default=45.0, gt=0)
    data_dir: Path = Field(default=REPO_ROOT.parent / "shared" / "data")
    calibration: Path | None = Field(default=None, description="a `scalper calibrate` file: the strategy workers put p_win "
                                     "and expected_r_net on every Signal (null without one)")
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    otlp_endpoint: str | None = None
    mt5_host: str | None = None
    mt5_port: int = 18812
    allow_live: bool = False
    # `scalper run` with SCALPER_BROKER=mt5: the demo account it creates when no `mt5` account has this login. The
    # password is stored as a reference to this variable (`env:SCALPER_MT5_PASSWORD`), never as its value.
    mt5_login: int | None = Field(default=None, description="the MT5 account's login")
    mt5_server: str | None = Field(default=None, description="the MT5 account's trade server, e.g. Exness-MT5Trial")
    mt5_password: SecretStr | None = Field(default=None, description="the MT5 account's password (kept in the environment)")
    mt5_server_time: str = Field(default="us_dst", description="the broker's server clock: us_dst, utc or an hour offset")
    mt5_suffix: str = Field(default="", description="the broker's symbol suffix, e.g. m for XAUUSDm")

    # Hardening: secrets, the services' own calls, and prices that make no sense.
    secret_key: SecretStr | None = Field(
        default=None, description="key that encrypts MT5 passwords at rest (required in distributed mode; `scalper run` "
        "creates var/secret.key, mode 0600, on first start)",
    )
    service_token: SecretStr | None = Field(
        default=None, description="distributed: the token every service sends on its internal calls, and requires",
    )
    bar_sanity_atr: float = Field(
        default=25.0, gt=0, description="a bar whose range, or move from the previous close, exceeds this many ATR(14) of "
        "the bars before it is refused",
    )
    max_stop_atr: float = Field(
        default=20.0, gt=0, description="decision refuses an order whose stop or target is further than this many ATR",
    )
    max_quote_deviation: float = Field(
        default=0.02, gt=0, lt=1, description="the executor refuses a market order whose signal entry is further than "
        "this fraction of the price from the broker's current quote",
    )

    speed: float = Field(default=600.0, gt=0, description="clock speed of synthetic and replay feeds")
    port: int = 8000
    monitor_interval_s: float = Field(default=60.0, gt=0, description="position monitor cycle")
    stale_after_min: float = Field(default=5.0, gt=0, description="minutes without a new closed bar before a symbol's scan pauses")
    delivery_limit: int = Field(default=5, ge=1, description="deliveries of a failing message before it is dead-lettered")
    prefetch: int = Field(default=32, ge=1)
    strategy_concurrency: int = Field(
        default=2, ge=1,
        description="bar windows a strategy worker handles at once: it evaluates the next while the last one's publishes "
                    "wait for the broker's confirms",
    )
    order_ttl_s: float = Field(default=30.0, gt=0, description="an order intent not sent within this is expired")
    intent_resend_grace_s: float = Field(
        default=30.0, gt=0,
        description="a decision still `sent` this long past its order's expiry has its intent sent again (real seconds, "
                    "like order_ttl_s), so the executor answers it; decision looks at start and every this long",
    )
    paper_balance: float = Field(default=10_000.0, gt=0)
    paper_commission_per_lot: float = Field(default=0.0, ge=0)
    lookback_bars: int = Field(default=100, ge=20, description="fewest closed bars a scan publishes")

    # Distributed mode (`scalper serve`): where the decision service forwards /symbols, /bars and /strategies, and
    # the simulated clock every process shares (simulated time `clock_start` at the wall-clock instant `clock_anchor`,
    # running `speed` times faster), so order expiry and trades-per-day agree with market data's replay.
    market_data_url: str = Field(default="http://127.0.0.1:8001", description="market data service, for the decision API")
    strategy_url: str = Field(default="http://127.0.0.1:8002", description="strategy service, for the decision API")
    http_timeout_s: float = Field(default=5.0, gt=0, description="time-out of calls between services")
    clock_start: datetime | None = Field(default=None, description="simulated time at clock_anchor (default: the feed's start)")
    clock_anchor: datetime | None = Field(default=None, description="wall-clock UTC instant at which the clock reads clock_start")


    def clock_speed(self) -> float:
        """The engine clock's speed: SCALPER_SPEED for the synthetic and replay feeds; for the mt5 feed real time (a
        terminal's clock) unless SCALPER_SPEED is set (a simulator started with --speed X)."""
        if self.feed == "mt5" and "speed" not in self.model_fields_set:
            return 1.0
        return self.speed


@lru_cache
def get_settings() -> Settings:
    return Settings()
