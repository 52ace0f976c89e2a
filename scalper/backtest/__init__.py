"""The backtester: a composition root that replays an M1 history through the live strategy functions, the decision
service's pure risk rules and the executor's paper-fill model, so a backtest trades exactly as live would."""
