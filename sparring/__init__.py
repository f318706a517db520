"""sparring: multi-turn RL rollouts on one LangGraph graph, with exact token data."""

__version__ = "0.1.0"
