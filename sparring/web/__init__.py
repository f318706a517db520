"""What every sparring HTTP face shares: auth, body guards, JSON bodies, request metrics, the listening socket.

`sparring serve` (the rollout service) and `sparring gateway` (the OpenAI-compatible session proxy)
both build on this package and on nothing of each other's guards, so they answer alike. It imports
nothing else from sparring: both faces sit above it.
"""

# Here rather than beside the code using them, so the CLI's parser reads them without loading FastAPI.
API_KEY_VARIABLE = "SPARRING_API_KEY"
OPERATOR_KEY_VARIABLE = "SPARRING_OPERATOR_KEY"
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
