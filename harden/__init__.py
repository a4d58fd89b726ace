"""segnode's hardening suite: fuzzed inputs, hostile peers, TLS, the web API, load and faults.

Each module runs one family of checks against the real node code (and real
peers where named) and returns :class:`harden.results.CheckResult` rows.
``make harden`` runs them all with long budgets and prints one table
(:mod:`harden.run_all`); ``tests/harden`` runs the same checks with short
budgets inside ``make test``.
"""
