"""sparring's environments for clients that are the policy: OpenEnv servers (`sparring env-serve`), OpenEnv's
harness (`harness.SparringSessionFactory`), and the policy's seat they both stand on (`bridge`).

`bridge` needs nothing beyond sparring; `server` and `harness` need the `openenv` extra (its own venv).
"""
