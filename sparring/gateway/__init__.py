"""The agent gateway: exact training data from any OpenAI-speaking agent, with no change to its code.

An agent points its OpenAI client at a session's base URL; every chat call goes on to the policy vLLM
with `return_token_ids` and logprobs added, comes back in plain OpenAI shape, and lands in the
session's token ledger. `finish` turns the session into the same rollout record as our own episodes.
See docs/gateway.md.
"""
