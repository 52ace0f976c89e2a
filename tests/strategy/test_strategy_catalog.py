"""The strategy catalog: look-up, parameter validation, lookback sizing and the `GET /strategies` answer."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from services.strategy.app import create_router
from shared.messages import StrategyConfig
from shared.strategies import catalog, doji_breakout, harami, pinbar, range_reversion, trend_pullback
from shared.strategies.catalog import Catalog, InvalidParams

PINBAR = "price_action_pinbar"
SCALPER = ["doji_breakout", PINBAR, "range_reversion", "trend_pullback"]
# Declared lookbacks of the defaults (measured and proved in test_strategy_lookback.py).
LOOKBACKS = {PINBAR: 357, "trend_pullback": 741, "doji_breakout": 357, "range_reversion": 431, "harami": 1795}


def test_get_names_a_strategy_or_lists_the_known_ones():
    assert catalog.get(PINBAR) is pinbar.STRATEGY
    with pytest.raises(KeyError, match="unknown strategy 'pin_bar'; known strategies: doji_breakout, harami, price_action_pinbar, "):
        catalog.get("pin_bar")


def test_names_by_engine():
    assert catalog.names() == catalog.names("scalper") == SCALPER
    assert catalog.names("harami") == ["harami"]
    assert catalog.names(None) == sorted([*SCALPER, "harami"])
    assert catalog.get("harami").timeframe == "5m"
    assert {catalog.get(name).timeframe for name in SCALPER} == {"1m"}
    assert [catalog.get(n) for n in ("trend_pullback", "doji_breakout", "range_reversion", "harami")] == [
        trend_pullback.STRATEGY, doji_breakout.STRATEGY, range_reversion.STRATEGY, harami.STRATEGY]


def test_validate_params_fills_the_defaults():
    full = catalog.validate_params(PINBAR, {"level_atr": 0.25})
    assert full["level_atr"] == 0.25
    assert full == {**pinbar.PinbarParams().model_dump(), "level_atr": 0.25}
    assert catalog.validate_params(PINBAR, None) == pinbar.PinbarParams().model_dump()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"levelatr": 0.3}, "levelatr: Extra inputs are not permitted"),
        ({"level_atr": 5}, "level_atr: Input should be less than or equal to 2"),
        ({"swing_n": "two"}, "swing_n: Input should be a valid integer"),
        ({"weight_shape": 0.9}, "must sum to 1"),
    ],
)
def test_validate_params_refuses_with_a_message_a_person_can_act_on(params, message):
    with pytest.raises(InvalidParams, match=message) as info:
        catalog.validate_params(PINBAR, params)
    assert str(info.value).startswith(f"{PINBAR}: ")
    assert info.value.errors and all("loc" in e and "msg" in e for e in info.value.errors)


def test_parsed_params_are_cached_and_keep_types_apart():
    assert catalog.parse_params(PINBAR, {"level_atr": 0.25}) is catalog.parse_params(PINBAR, {"level_atr": 0.25})
    assert catalog.parse_params(PINBAR, {}) == catalog.parse_params(PINBAR, {"level_atr": 0.3})
    assert catalog.parse_params(PINBAR, {"use_swings": True}).use_swings is True
    with pytest.raises(InvalidParams):  # 1 == True, but the cached True must not answer for 2
        catalog.parse_params(PINBAR, {"use_swings": 2})


def test_lookback_for_takes_the_largest_declared_and_never_less_than_100():
    assert catalog.lookback_for([]) == 100
    assert catalog.lookback_for([StrategyConfig(name=PINBAR)]) == 357
    assert catalog.lookback_for([StrategyConfig(name=PINBAR), StrategyConfig(name=PINBAR, params={"atr_period": 20})]) > 357
    assert catalog.lookback_for([StrategyConfig(name="from_a_newer_catalog")]) == 100
    assert catalog.lookback_for([StrategyConfig(name=PINBAR, params={"atr_period": "x"})]) == 357  # sized by its defaults
    assert catalog.lookback_for([], minimum=500) == 500


def test_a_catalog_refuses_two_strategies_of_one_name():
    with pytest.raises(ValueError, match="registered twice"):
        Catalog([pinbar.STRATEGY, pinbar.STRATEGY])


def test_describe_serves_names_schemas_and_defaults():
    entries = {entry["name"]: entry for entry in catalog.describe()}
    assert sorted(entries) == sorted([*SCALPER, "harami"])
    entry = entries[PINBAR]
    assert (entry["name"], entry["engine"], entry["timeframe"], entry["lookback"]) == (PINBAR, "scalper", "1m", 357)
    props = entry["params_schema"]["properties"]
    assert props["level_atr"]["default"] == 0.3 and props["level_atr"]["maximum"] == 2.0
    assert entry["params_schema"]["additionalProperties"] is False
    assert entry["defaults"]["swing_horizon"] == 120
    assert {name: e["lookback"] for name, e in entries.items()} == LOOKBACKS
    assert (entries["harami"]["engine"], entries["harami"]["timeframe"]) == ("harami", "5m")
    for name, e in entries.items():
        assert e["summary"] and e["params_schema"]["additionalProperties"] is False, name
        assert e["defaults"] == catalog.get(name).Params().model_dump(mode="json"), name
        for field, value in e["defaults"].items():  # every parameter is served with its default
            assert e["params_schema"]["properties"][field]["default"] == value, (name, field)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("trend_pullback", {"fast_ema": 60}, "must be shorter than slow_ema"),
        ("trend_pullback", {"pullback_atr": -1}, "greater than or equal to 0"),
        ("doji_breakout", {"stop_at": "far"}, "stop_at: Input should be 'edge' or 'mid'"),
        ("range_reversion", {"adx_max": 120}, "adx_max: Input should be less than or equal to 100"),
        ("harami", {"weight_move": 0.9}, "must sum to 1"),
    ],
)
def test_each_strategy_refuses_bad_parameters(name, params, message):
    with pytest.raises(InvalidParams, match=message):
        catalog.validate_params(name, params)


def test_lookback_for_the_scalper_engine_is_its_longest_strategy():
    configs = [StrategyConfig(name=n) for n in SCALPER]
    assert catalog.lookback_for(configs) == 741  # trend_pullback's EMA(50)
    assert catalog.lookback_for([StrategyConfig(name="harami")]) == 1795


async def test_get_strategies_answers_the_list_shape():
    app = FastAPI()
    app.include_router(create_router(), prefix="/api/v1")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://strategy") as client:
        answer = await client.get("/api/v1/strategies")
    assert answer.status_code == 200
    body = answer.json()
    assert body["count"] == 5 and body["next_cursor"] is None
    data = {entry["name"]: entry for entry in body["data"]}
    assert sorted(data) == sorted([*SCALPER, "harami"])
    assert data[PINBAR]["params_schema"]["properties"]["target_r"]["default"] == 2.0
    assert data["harami"]["timeframe"] == "5m" and data["trend_pullback"]["lookback"] == 741
