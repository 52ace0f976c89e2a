"""The position monitor's rules from `SCALPER_*` settings (executor-only, so they live beside the executor)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.executor.trailing import ExitRule, TrailRule


class PositionRules(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCALPER_", env_file=".env", extra="ignore")

    trail_mode: Literal["off", "pips", "atr"] = Field(default="off", description="trailing stop: off | pips | atr")
    trail_distance_pips: float = Field(default=10.0, gt=0)
    trail_atr_period: int = Field(default=14, ge=1)
    trail_atr_multiple: float = Field(default=2.0, gt=0)
    trail_activation_pips: float = Field(default=0.0, ge=0)
    trail_step_pips: float = Field(default=0.0, ge=0)
    time_stop_min: float = Field(default=0.0, ge=0, description="close a position held this long (0: off)")
    exit_on_opposite_signal: bool = Field(default=False, description="close a bot's position when it is sent the other side")
    exit_on_invalidation: bool = Field(default=True, description="close a position once its strategy's setup is invalid "
                                       "(range_reversion: ADX above adx_exit or a close outside its range)")

    def trail(self) -> TrailRule:
        return TrailRule(mode=self.trail_mode, distance_pips=self.trail_distance_pips, atr_period=self.trail_atr_period,
                         atr_multiple=self.trail_atr_multiple, activation_pips=self.trail_activation_pips,
                         step_pips=self.trail_step_pips)

    def exits(self) -> ExitRule:
        return ExitRule(time_stop_min=self.time_stop_min, opposite_signal=self.exit_on_opposite_signal,
                        invalidation=self.exit_on_invalidation)
