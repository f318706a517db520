"""The compiled graphs `langgraph dev` and Studio load (langgraph.json points here).

The same builder as every other face; edit the endpoints and limits in Studio's context form.
"""

from __future__ import annotations

from sparring.envs.tictactoe import TicTacToe
from sparring.graphs.episode import build_graph

tictactoe = build_graph(TicTacToe())
