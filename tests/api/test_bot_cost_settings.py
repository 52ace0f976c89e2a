"""The cost-gate bot settings over REST: defaults, validation, PATCH; the signals' p_win and expected_r_net stored
with the signal and served back."""

from __future__ import annotations

from api_helpers import new_account, new_bot


async def test_cost_settings_default_validate_and_patch(api, alice):
    account = await new_account(api, alice)
    bot = await new_bot(api, alice, account["id"])
    assert (bot["min_stop_spread_ratio"], bot["min_expected_r"]) == (3.0, 0.0)
    bad = await api.client.patch(f"/api/v1/bots/{bot['id']}", json={"min_stop_spread_ratio": -1}, headers=alice.headers)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "min_stop_spread_ratio"
    bad = await api.client.patch(f"/api/v1/bots/{bot['id']}", json={"min_expected_r": 50}, headers=alice.headers)
    assert bad.status_code == 422
    ok = await api.client.patch(f"/api/v1/bots/{bot['id']}", json={"min_stop_spread_ratio": 4.5, "min_expected_r": 0.05},
                                headers=alice.headers)
    assert ok.status_code == 200 and (ok.json()["min_stop_spread_ratio"], ok.json()["min_expected_r"]) == (4.5, 0.05)
    made = await new_bot(api, alice, account["id"], symbol="EURUSDm", min_stop_spread_ratio=2.0)
    assert made["min_stop_spread_ratio"] == 2.0
