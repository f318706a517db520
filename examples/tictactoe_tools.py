"""The tic-tac-toe side of the gateway examples: the agent's own `make_move` tool, the opponent inside it.

This is the agent's environment, not sparring's: the agent runs its tools itself. It uses sparring's
tic-tac-toe rules so the tool results carry the board as that environment writes it, which lets the
gateway's `tictactoe` verifier replay and score the game at the end.
"""

from __future__ import annotations

from typing import Any

from sparring.envs.tictactoe import OPENING, POLICY_PROMPT, TicTacToe

OPPONENT_PREFERENCE = (8, 1, 3, 5, 7, 0, 2, 6, 4)


class Game:
    """One game: X is the agent, O answers each legal X move at once with its first free preferred cell."""

    def __init__(self) -> None:
        self.env = TicTacToe()
        self.state: dict[str, Any] | None = None

    async def start(self, task: dict[str, Any] | None = None) -> list[dict[str, str]]:
        """Seed the board; the opening messages for the agent."""
        self.state = await self.env.seed(task or {})
        board = self.env.observe(self.state, "policy")
        return [{"role": "system", "content": POLICY_PROMPT}, {"role": "user", "content": f"{OPENING}\n{board}"}]

    @property
    def over(self) -> bool:
        return self.state is not None and self.env.is_done(self.state)

    async def move(self, position: int) -> str:
        """X plays `position`; unless that ended the game or was illegal, O answers. The board as JSON."""
        assert self.state is not None, "start() the game first"
        result = await self.env.call_tool(self.state, "policy", "make_move", {"position": position})
        self.state = result.state
        if result.is_error or self.over:
            return result.content
        free = [cell for cell in OPPONENT_PREFERENCE if self.state["board"][cell] is None]
        answer = await self.env.call_tool(self.state, "user", "make_move", {"position": free[0]})
        self.state = answer.state
        return answer.content
