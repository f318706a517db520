"""Tic-tac-toe: the policy plays X, the simulated user plays O, both through `make_move(position)`.

The actor comes with every call, so the mark is never inferred from alternation; a move out of turn
is an error the actor sees, not a move for the other side.

Small models lose track of the board, so the game is built to finish on them: the user's tool lists
the free cells as an `enum` (with a `strict` tool and a required tool choice, vLLM can only sample a
legal move), the user hands over right after its move instead of writing words, and if its turn still
ends without a move the environment plays one for it, so the policy always gets a board it can move on.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any, ClassVar

import orjson

from sparring.core.attribution import AttributionRules, Episode, Reason, at, reason, text_of
from sparring.core.errors import ReplayError, SeedError
from sparring.envs.base import Actor, Environment, Verdict
from sparring.tools.specs import ToolResult, ToolSpec

LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))
MARKS: dict[str, str] = {"policy": "X", "user": "O"}
RESULT_FOR_X = {"X": ("win", 1.0), "O": ("loss", 0.0), "draw": ("draw", 0.5)}

MAKE_MOVE = ToolSpec(
    name="make_move",
    description="Place your mark on the board. Positions are 0-8, row by row: 0 1 2 / 3 4 5 / 6 7 8.",
    parameters={
        "type": "object",
        "properties": {
            "position": {"type": "integer", "minimum": 0, "maximum": 8, "description": "The empty cell to mark, 0-8."}
        },
        "required": ["position"],
        "additionalProperties": False,
    },
)
MOVE_TOOLS = (MAKE_MOVE,)

POLICY_PROMPT = (
    "You are playing tic-tac-toe as X against the user, who plays O. On your turn, call the make_move "
    "tool with the position (0-8, row by row) of an empty cell. Play to win."
)
OPENING = "Let's play tic-tac-toe. You are X and you move first."
USER_PERSONA = (
    "You are playing tic-tac-toe as O against the assistant, who plays X. On your turn, call make_move with "
    "the position of a free cell: the board shows free cells by their number (0-8, row by row). If you are "
    "asked to write instead, say in one short plain sentence which cell you took. Never move for X."
)
FALLBACK_ORDER = (4, 0, 2, 6, 8, 1, 3, 5, 7)
"""Where the environment moves for a user that could not: centre, corners, edges."""
JUDGE_PROMPT = (
    "The simulated user plays O against the assistant, who plays X; both move with make_move. When O makes "
    "no legal move the environment plays one for it, and the game is scored for X (a win 1, a draw 0.5, a "
    "loss or an unfinished game 0). How well or badly O plays is never a fault: a strong O is a fair "
    "opponent, and a weak one cannot stop the game. The user is at fault only when its words misled X "
    "(claiming a move it did not make, describing a wrong board, speaking as X, writing chat-template "
    "markup). Otherwise a game X did not win is the assistant's failure."
)
_TAKEN = re.compile(r"position (\d) is already taken|arguments\.position must be one of \[[\d, ]*\], got (\d)\b")
"""A move refused on a taken cell: by the environment, or by the user's tool, whose enum lists only free cells."""


class TicTacToe(Environment):
    """The tic-tac-toe environment; the episode state is a JSON-able dict."""

    name = "tictactoe"
    # Both players must move each step (a required tool choice, constrained decoding of the arguments);
    # an illegal move gets a retry, a legal one ends the turn, and the user hands over without words.
    settings: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {
            "user_tool_choice": "required",
            "policy_tool_choice": "required",
            "max_steps_per_turn": 3,
            "max_user_steps_per_turn": 3,
            "user_words_after_move": False,
        }
    )

    def tools(self, actor: Actor) -> Sequence[ToolSpec]:
        """Both players move with the same tool; the environment never acts itself."""
        return MOVE_TOOLS if actor in MARKS else ()

    def episode_tools(self, state: dict[str, Any], actor: Actor) -> Sequence[ToolSpec]:
        """The user's tool offers only the free cells (the policy's stays the full board: its mistakes are data)."""
        free = tuple(cell for cell, mark in enumerate(state["board"]) if mark is None)
        if actor != "user" or state["winner"] is not None or not free:
            return self.tools(actor)
        return _move_to_one_of(free)

    def settle_user_turn(self, state: dict[str, Any]) -> ToolResult | None:
        """If O's turn ended without a legal move, play one for it (centre, corners, edges), so X can move."""
        if state["winner"] is not None or state["next_mark"] != "O":
            return None
        position = next(cell for cell in FALLBACK_ORDER if state["board"][cell] is None)
        new_state = {**state, "board": list(state["board"]), "moves": list(state["moves"])}
        _place(new_state, "O", position)
        new_state["moves"][-1]["by"] = "env"
        message = f"O made no legal move, so the environment played {position} for O."
        if new_state["winner"]:
            message += " The board is full: draw." if new_state["winner"] == "draw" else " O wins."
        return ToolResult(content=message + "\n" + _board_json(new_state), state=new_state)

    def default_messages(self) -> list[dict[str, str]]:
        """The opening a task without `messages` gets."""
        return [{"role": "system", "content": POLICY_PROMPT}, {"role": "user", "content": OPENING}]

    def user_persona(self, task: dict[str, Any]) -> str:
        """The O player's instructions, unless the task brings its own."""
        return task.get("user_persona") or USER_PERSONA

    async def seed(self, task: dict[str, Any]) -> dict[str, Any]:
        """An empty board, or the task's `env_seed.initial_moves` ([{position, mark}]).

        Seeded moves go on the board as given, in any order (NeMo Gym's rows open with O's move alone),
        and the next mark is the other one; a taken cell, a bad mark or a finished game is an error.
        """
        state: dict[str, Any] = {"board": [None] * 9, "next_mark": "X", "winner": None, "moves": []}
        seed = task.get("env_seed") or {}
        for i, move in enumerate(seed.get("initial_moves") or ()):
            where = f"env_seed.initial_moves[{i}]"
            if not isinstance(move, dict) or set(move) != {"position", "mark"}:
                raise SeedError(f"{where}: expected {{'position': 0-8, 'mark': 'X' or 'O'}}, got {move!r}")
            error = _move_error({**state, "next_mark": move["mark"]}, move["mark"], move["position"])
            if error:
                raise SeedError(f"{where}: {error}")
            _place(state, move["mark"], move["position"])
        return state

    def is_done(self, state: dict[str, Any]) -> bool:
        """Won or full."""
        return state["winner"] is not None

    def turn_over(self, state: dict[str, Any], actor: Actor) -> bool:
        """A player's turn is over once the other mark is to move (its move was legal, or it was never its turn)."""
        return state["next_mark"] != MARKS.get(actor)

    async def call_tool(self, state: dict[str, Any], actor: Actor, name: str, arguments: dict[str, Any]) -> ToolResult:
        """Play one move for `actor`; anything illegal comes back as an error with the board unchanged."""
        if name != MAKE_MOVE.name:
            return _error(state, f"unknown tool {name!r}; the only tool is make_move")
        mark = MARKS.get(actor)
        if mark is None:
            return _error(state, f"{actor} does not play")
        error = _move_error(state, mark, arguments.get("position"))
        if error:
            return _error(state, error)
        new_state = {**state, "board": list(state["board"]), "moves": list(state["moves"])}
        _place(new_state, mark, arguments["position"])
        message = f"{mark} played {arguments['position']}."
        if new_state["winner"] == "draw":
            message += " The board is full: draw."
        elif new_state["winner"]:
            message += f" {new_state['winner']} wins."
        return ToolResult(content=_board_json(new_state, message=message), state=new_state)

    def observe(self, state: dict[str, Any], actor: Actor) -> str | None:
        """The board, drawn and as JSON, for a player about to act."""
        if actor not in MARKS:
            return None
        rows = (" | ".join(c or str(i) for i, c in enumerate(state["board"][r : r + 3], start=r)) for r in (0, 3, 6))
        return "The board (free cells show their number):\n" + "\n".join(rows) + "\n" + _board_json(state)

    def follow_result(self, state: dict[str, Any], result: str) -> dict[str, Any]:
        """Replaying (scoring) a game someone else ran: O's replies are on the board a result shows.

        X's moves come from replaying the policy's calls; any other new mark must be O's, played in
        turn, and the board must then be exactly the result's. A result that is not a board, or a
        refused move (an error), changes nothing.
        """
        try:
            shown = orjson.loads(result)
        except orjson.JSONDecodeError:
            return state
        if not isinstance(shown, dict) or shown.get("error") or not _is_board(shown.get("board")):
            return state
        board = shown["board"]
        new = {cell: mark for cell, mark in enumerate(board) if mark and not state["board"][cell]}
        if any(mark != "O" for mark in new.values()):
            raise ReplayError(f"the board {board} shows an X the replayed calls did not play")
        followed = {**state, "board": list(state["board"]), "moves": list(state["moves"])}
        for cell in sorted(new):
            error = _move_error(followed, "O", cell)
            if error:
                raise ReplayError(f"O at {cell} is not a legal move: {error}")
            _place(followed, "O", cell)
        if followed["board"] != board:
            raise ReplayError(f"the board {board} does not follow from the moves played before it")
        return followed

    def attribution_rules(self, task: dict[str, Any], state: Any) -> AttributionRules:
        """O's moves on taken cells and the moves the environment played for it, as notes (see the check)."""
        return ATTRIBUTION_RULES

    def judge_prompt(self, task: dict[str, Any]) -> str:
        """O's play is never a fault here; only words that mislead X are."""
        return JUDGE_PROMPT

    async def verify(self, state: dict[str, Any], messages: Sequence[Any]) -> Verdict:
        """1 for an X win, 0.5 for a draw, 0 for a loss or an unfinished game."""
        game_result, reward = RESULT_FOR_X.get(state["winner"], ("incomplete", 0.0))
        return Verdict(
            reward=reward,
            components={"outcome": reward},
            result={"game_result": game_result, "board": state["board"], "moves": state["moves"]},
        )


def check_o_moves(episode: Episode) -> Iterator[Reason]:
    """O's tries on taken cells (counting those it had been refused before: it did not read the result)
    and the moves the environment played for it.

    Notes, never faults: the environment moves for a user that cannot, so O's mistakes never stop the
    game or cost X a win; the game X played is still its own to learn from.
    """
    refused: list[int] = []
    repeated, first = 0, None
    for index, message in enumerate(episode.user_messages):
        if message["role"] != "tool" or message.get("status") == "success":
            continue
        found = _TAKEN.search(text_of(message))
        if found is None:
            continue
        position = int(found.group(1) or found.group(2))
        repeated += position in refused
        refused.append(position)
        first = index if first is None else first
    if first is not None:
        detail = f"O tried {len(refused)} taken cell(s) {refused}, {repeated} of them again after being refused"
        yield reason("user_taken_cells", "user", detail, at("user_messages", first), "note")
    moves = (episode.record.get("env_result") or {}).get("moves") or ()
    for_user = [move["position"] for move in moves if isinstance(move, Mapping) and move.get("by") == "env"]
    if for_user:
        detail = f"the environment played O's move(s) {for_user} for a user that made no legal move"
        yield reason("env_moved_for_user", "user", detail, None, "note")


ATTRIBUTION_RULES = AttributionRules(checks=(check_o_moves,))


@functools.cache
def _move_to_one_of(free: tuple[int, ...]) -> tuple[ToolSpec]:
    """`make_move` limited to these cells: one object per set of free cells (512 at most), so it is cached."""
    position = {"type": "integer", "enum": list(free), "description": "A free cell: " + ", ".join(map(str, free))}
    return (replace(MAKE_MOVE, parameters={**MAKE_MOVE.parameters, "properties": {"position": position}}),)


def _is_board(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 9 and all(cell in (None, "X", "O") for cell in value)


def _move_error(state: dict[str, Any], mark: str, position: Any) -> str | None:
    """Why `mark` may not play `position` now, or None."""
    if state["winner"] is not None:
        return "the game is over"
    if isinstance(position, bool) or not isinstance(position, int):
        return f"position must be an integer 0-8, got {position!r}"
    if not 0 <= position <= 8:
        return f"position {position} is out of range 0-8"
    if mark not in ("X", "O"):
        return f"mark must be 'X' or 'O', got {mark!r}"
    if mark != state["next_mark"]:
        return f"it is not {mark}'s turn; {state['next_mark']} moves next"
    if state["board"][position] is not None:
        return f"position {position} is already taken by {state['board'][position]}"
    return None


def _place(state: dict[str, Any], mark: str, position: int) -> None:
    """Mark the cell, record the move, and settle winner and next mark."""
    board = state["board"]
    board[position] = mark
    state["moves"].append({"position": position, "mark": mark})
    if any(board[a] == board[b] == board[c] == mark for a, b, c in LINES):
        state["winner"] = mark
    elif all(board):
        state["winner"] = "draw"
    state["next_mark"] = "O" if mark == "X" else "X"


def _board_json(state: dict[str, Any], **extra: Any) -> str:
    """The board as tool results and observations carry it."""
    winner = state["winner"]
    return orjson.dumps(
        {
            "board": state["board"],
            "next_mark": None if winner else state["next_mark"],
            "game_over": winner is not None,
            "winner": winner,
            **extra,
        }
    ).decode()


def _error(state: dict[str, Any], message: str) -> ToolResult:
    """An illegal call: the actor sees why, and the board as it still is."""
    return ToolResult(content=_board_json(state, error=message), state=state, is_error=True)


# -- "win in one" positions: a task set where one decision decides the reward ------------------------------

WIN_IN_ONE_OPENING = "We are in the middle of a game of tic-tac-toe. You are X and it is your move."
SYMMETRIES: tuple[tuple[int, ...], ...] = tuple(
    tuple(3 * r + c for r, c in (transform(i // 3, i % 3) for i in range(9)))
    for transform in (
        lambda r, c: (r, c),
        lambda r, c: (c, 2 - r),
        lambda r, c: (2 - r, 2 - c),
        lambda r, c: (2 - c, r),
        lambda r, c: (r, 2 - c),
        lambda r, c: (2 - r, c),
        lambda r, c: (c, r),
        lambda r, c: (2 - c, 2 - r),
    )
)
"""The 8 rotations and reflections of the board, each as the cell every cell moves to."""


def winning_cells(board: Sequence[str | None], mark: str) -> list[int]:
    """The free cells where `mark` would complete a line."""
    return [
        cell
        for cell in range(9)
        if board[cell] is None
        and any(cell in line and all(board[o] == mark for o in line if o != cell) for line in LINES)
    ]


def symmetry_class(board: Sequence[str | None]) -> str:
    """The same string for a board and its 7 rotations and reflections (a split by it keeps mirrors together)."""
    forms = []
    for moved in SYMMETRIES:
        image: list[str | None] = [None] * 9
        for cell, mark in enumerate(board):
            image[moved[cell]] = mark
        forms.append("".join(mark or "." for mark in image))
    return min(forms)


def win_in_one_tasks() -> list[dict[str, Any]]:
    """Every position X reaches with 2 or 3 marks each, no line yet, and exactly one winning cell, as tasks of one
    move (`max_turns` 1, one step): the reward is 1 when X takes that cell, else 0.

    Ids are `w1-<board>` (`.` for free cells); `env_seed.symmetry_class` lets a split keep mirror images together.
    """
    tasks = []
    for x_count in (2, 3):
        for cells in itertools.combinations(range(9), 2 * x_count):
            for xs in itertools.combinations(cells, x_count):
                board: list[str | None] = [None] * 9
                for cell in cells:
                    board[cell] = "X" if cell in xs else "O"
                if any(all(board[c] == m for c in line) for line in LINES for m in "XO"):
                    continue
                if len(winning_cells(board, "X")) != 1:
                    continue
                os_ = [c for c in cells if c not in xs]
                order = [cell for pair in zip(xs, os_, strict=True) for cell in pair]  # X, O, X, O, ...
                moves = [{"position": cell, "mark": board[cell]} for cell in order]
                tasks.append(
                    {
                        "id": "w1-" + "".join(mark or "." for mark in board),
                        "env_seed": {"initial_moves": moves, "symmetry_class": symmetry_class(board)},
                        "limits": {"max_turns": 1, "max_steps_per_turn": 1},
                        "messages": [
                            {"role": "system", "content": POLICY_PROMPT},
                            {"role": "user", "content": WIN_IN_ONE_OPENING},
                        ],
                    }
                )
    return tasks
