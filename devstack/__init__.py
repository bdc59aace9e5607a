"""Development harness, not shipped: private pymap servers for the tests and
benchmarks, and the local stack of ``make run``."""
